"""Provisioning a fleet: CA, broker, server account and device folders, and adding devices later."""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.names import check_name
from fedge.tools.provision import pki
from fedge.tools.provision.configs import device_toml, server_toml
from fedge.tools.provision.files import PRIVATE_DIR_MODE, make_dir, write_file, write_secret
from fedge.tools.provision.layout import FleetLayout
from fedge.tools.provision.mosquitto import (
    AuthMode,
    BrokerFiles,
    hash_password,
    read_password_file,
    render_acl,
    render_conf,
    render_password_file,
)
from fedge.tools.provision.spec import FleetSpec, load_spec, save_spec

DEVICE_ID_RE = re.compile(r"^dev-(\d+)$")
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision_fleet` wrote."""

    out_dir: Path
    fleet: str
    auth: AuthMode
    broker_url: str
    ca_cert: Path
    mosquitto_conf: Path
    server_config: Path
    devices: dict[str, Path]
    """Device id -> the folder to copy onto that device (holds its ``device.toml``)."""


def server_account(fleet: str) -> str:
    """The server's MQTT user name; '@' keeps it out of the device-id namespace."""
    return f"fedge-server@{fleet}"


def _new_password() -> str:
    return secrets.token_urlsafe(32)


def _check_fleet(fleet: str) -> str:
    try:
        return check_name("fleet", fleet)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc


def _check_device_ids(ids: list[str], existing: tuple[str, ...]) -> list[str]:
    for device_id in ids:
        try:
            check_name("device id", device_id)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
    duplicates = sorted({d for d in ids if ids.count(d) > 1} | (set(ids) & set(existing)))
    if duplicates:
        raise ConfigError(f"device ids already used: {duplicates}")
    return ids


def _next_ids(count: int, existing: tuple[str, ...]) -> list[str]:
    if isinstance(count, bool) or count < 0:
        raise ConfigError(f"device count must be a non-negative integer, got {count!r}")
    numbers = [int(m.group(1)) for d in existing if (m := DEVICE_ID_RE.match(d))]
    start = max(numbers, default=0) + 1
    return [f"dev-{n:04d}" for n in range(start, start + count)]


def _resolve_ids(count_or_ids: int | list[str], existing: tuple[str, ...]) -> list[str]:
    if isinstance(count_or_ids, int):
        return _next_ids(count_or_ids, existing)
    if isinstance(count_or_ids, str):
        raise ConfigError(f"give a device count or a list of ids, not the string {count_or_ids!r}")
    return _check_device_ids(list(count_or_ids), existing)


def _check_http_url(http_url: str) -> str:
    parsed = urlparse(http_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"http_url must look like https://host:port, got {http_url!r}")
    return parsed.hostname


def _bind_address(host: str) -> str | None:
    """Bind to loopback for a loopback broker host, else to every interface (a VM behind NAT
    does not own its public address)."""
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return "127.0.0.1" if host == "localhost" else None


def _write_cert_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    write_file(cert_path, pki.cert_pem(cert))
    write_secret(key_path, pki.private_pem(key))


def _write_broker_files(layout: FleetLayout, spec: FleetSpec, passwords: dict[str, str]) -> None:
    """(Re)write password file (password mode), ACL and configuration.

    ``passwords`` holds the accounts created by this call; earlier entries are kept as hashed.
    """
    if spec.auth == "password":
        entries = read_password_file(layout.password_file)
        entries |= {user: hash_password(pw) for user, pw in passwords.items()}
        write_secret(layout.password_file, render_password_file(entries))
    write_file(layout.acl_file, render_acl(spec.fleet, spec.server_user))
    files = BrokerFiles(
        conf_file=layout.mosquitto_conf,
        ca_file=layout.ca_cert,
        cert_file=layout.broker_cert,
        key_file=layout.broker_key,
        acl_file=layout.acl_file,
        password_file=layout.password_file,
        persistence_dir=layout.persistence_dir,
        log_file=layout.broker_log,
    )
    conf = render_conf(
        spec.fleet, spec.broker_port, _bind_address(spec.broker_host), spec.auth, files
    )
    write_file(layout.mosquitto_conf, conf)


def _provision_server(layout: FleetLayout, spec: FleetSpec, ca: pki.CertAuthority) -> str | None:
    """Write the server folder; returns the server's MQTT password in password mode."""
    folder = make_dir(layout.server_dir, PRIVATE_DIR_MODE)
    write_file(folder / "ca.crt", pki.cert_pem(ca.cert))
    password = _new_password() if spec.auth == "password" else None
    if password is None:
        issued = pki.issue_client_cert(ca, spec.server_user, spec.fleet)
        _write_cert_pair(folder / "client.crt", folder / "client.key", *issued)
    for name in ("signing", "enrolment"):
        key = pki.new_ed25519()
        write_secret(folder / f"{name}.key", pki.private_pem(key))
        write_file(folder / f"{name}.pub", pki.public_pem(key))
    http_host = _check_http_url(spec.http_url)
    http_tls = urlparse(spec.http_url).scheme == "https"
    if http_tls:
        hosts = [http_host, *LOOPBACK_NAMES]
        issued = pki.issue_server_cert(ca, f"fedge {spec.fleet} server", spec.fleet, hosts)
        _write_cert_pair(folder / "http.crt", folder / "http.key", *issued)
    toml = server_toml(
        spec.fleet, spec.broker_url, spec.server_user, password, spec.http_url, http_tls
    )
    write_file(layout.server_config, toml, 0o600)
    return password


def _provision_device(
    layout: FleetLayout, spec: FleetSpec, ca: pki.CertAuthority, device_id: str
) -> str | None:
    """Write one device folder; returns the device's MQTT password in password mode."""
    folder = make_dir(layout.device_dir(device_id), PRIVATE_DIR_MODE)
    write_file(folder / "ca.crt", pki.cert_pem(ca.cert))
    password = _new_password() if spec.auth == "password" else None
    if password is None:
        issued = pki.issue_client_cert(ca, device_id, spec.fleet)
        _write_cert_pair(folder / "client.crt", folder / "client.key", *issued)
    identity = pki.new_ed25519()
    write_secret(folder / "identity.key", pki.private_pem(identity))
    write_file(folder / "identity.pub", pki.public_pem(identity))
    write_file(folder / "server_signing.pub", (layout.server_dir / "signing.pub").read_bytes())
    write_file(folder / "enrolment.pub", (layout.server_dir / "enrolment.pub").read_bytes())
    toml = device_toml(device_id, spec.fleet, spec.broker_url, device_id, password)
    write_file(folder / "device.toml", toml, 0o600)
    return password


def _result(layout: FleetLayout, spec: FleetSpec) -> ProvisionResult:
    return ProvisionResult(
        out_dir=layout.root,
        fleet=spec.fleet,
        auth=spec.auth,
        broker_url=spec.broker_url,
        ca_cert=layout.ca_cert,
        mosquitto_conf=layout.mosquitto_conf,
        server_config=layout.server_config,
        devices={d: layout.device_dir(d) for d in spec.devices},
    )


def provision_fleet(
    out_dir: Path,
    fleet: str,
    devices: int | list[str],
    *,
    broker_host: str = "127.0.0.1",
    broker_port: int = 8883,
    auth: AuthMode = "cert",
    http_url: str = "https://127.0.0.1:8443",
) -> ProvisionResult:
    """Create a fleet from scratch: CA, broker files, server account and one folder per device.

    Parameters
    ----------
    out_dir : Path
        Output directory; must not hold a provisioned fleet yet.
    fleet : str
        Fleet name (topic segment).
    devices : int or list of str
        How many devices (named ``dev-0001``...) or their explicit ids.
    broker_host : str
        Host name or IP devices use to reach the broker (goes into the broker certificate).
    broker_port : int
        TLS port of the broker.
    auth : {"cert", "password"}
        Client certificates (CN = device id) or user name + password, TLS either way.
    http_url : str
        Base URL of the server's HTTP API (artifacts); an https URL gets a certificate.

    Returns
    -------
    ProvisionResult
        Paths of what was written.

    Raises
    ------
    ConfigError
        On an invalid argument or if ``out_dir`` already holds a fleet.
    """
    layout = FleetLayout.at(out_dir)
    fleet = _check_fleet(fleet)
    if auth not in ("cert", "password"):
        raise ConfigError(f"auth must be 'cert' or 'password', got {auth!r}")
    if isinstance(broker_port, bool) or not 0 < broker_port < 65536:
        raise ConfigError(f"broker_port must be in 1..65535, got {broker_port!r}")
    pki.host_names([broker_host])
    _check_http_url(http_url)
    if layout.spec_file.exists() or layout.ca_cert.exists():
        raise ConfigError(f"{layout.root} already holds a fleet: add devices with --add")
    device_ids = _resolve_ids(devices, ())
    spec = FleetSpec(
        fleet=fleet,
        broker_host=broker_host,
        broker_port=broker_port,
        auth=auth,
        http_url=http_url,
        server_user=server_account(fleet),
        devices=(),
    )

    make_dir(layout.root)
    make_dir(layout.private_dir, PRIVATE_DIR_MODE)
    ca = pki.new_ca(fleet)
    write_secret(layout.ca_key, pki.private_pem(ca.key))
    write_file(layout.ca_cert, pki.cert_pem(ca.cert))

    make_dir(layout.mosquitto_dir)
    make_dir(layout.persistence_dir, PRIVATE_DIR_MODE)
    hosts = [broker_host, *LOOPBACK_NAMES]
    issued = pki.issue_server_cert(ca, f"fedge {fleet} broker", fleet, hosts)
    _write_cert_pair(layout.broker_cert, layout.broker_key, *issued)

    passwords: dict[str, str] = {}
    server_password = _provision_server(layout, spec, ca)
    if server_password is not None:
        passwords[spec.server_user] = server_password
    spec = _add(layout, spec, ca, device_ids, passwords)
    return _result(layout, spec)


def _add(
    layout: FleetLayout,
    spec: FleetSpec,
    ca: pki.CertAuthority,
    device_ids: list[str],
    passwords: dict[str, str],
) -> FleetSpec:
    make_dir(layout.devices_dir, PRIVATE_DIR_MODE)
    for device_id in device_ids:
        password = _provision_device(layout, spec, ca, device_id)
        if password is not None:
            passwords[device_id] = password
    spec = replace(spec, devices=spec.devices + tuple(device_ids))
    _write_broker_files(layout, spec, passwords)
    save_spec(layout.spec_file, spec)
    return spec


def add_devices(out_dir: Path, count_or_ids: int | list[str]) -> list[str]:
    """Add devices to a provisioned fleet, reusing its CA; rewrites password file and ACL.

    Parameters
    ----------
    out_dir : Path
        Directory written by :func:`provision_fleet`.
    count_or_ids : int or list of str
        How many new devices (numbered after the highest ``dev-NNNN``) or their explicit ids.

    Returns
    -------
    list of str
        The new device ids. A running Mosquitto picks up new passwords on SIGHUP.

    Raises
    ------
    ConfigError
        If ``out_dir`` holds no fleet, or an id is invalid or already used.
    """
    layout = FleetLayout.at(out_dir)
    spec = load_spec(layout.spec_file)
    ca = pki.load_ca(layout.ca_cert, layout.ca_key)
    device_ids = _resolve_ids(count_or_ids, spec.devices)
    _add(layout, spec, ca, device_ids, {})
    return device_ids
