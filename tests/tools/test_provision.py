"""Provisioning writes a complete, well-protected fleet and can add devices later."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.config import load_device_config
from fedge.edge_client.errors import ConfigError
from fedge.tools.provision import (
    ProvisionResult,
    add_devices,
    main,
    provision_fleet,
    server_account,
)
from fedge.tools.provision.mosquitto import (
    hash_password,
    read_password_file,
    render_password_file,
)

FLEET = "alpha"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def verify_client(ca: Path, cert: Path) -> None:
    store = verification.Store([load_cert(ca)])
    builder = verification.PolicyBuilder().store(store)
    builder.build_client_verifier().verify(load_cert(cert), [])


def verify_server(ca: Path, cert: Path, host: str) -> None:
    subject: verification.Subject
    try:
        subject = verification.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = verification.DNSName(host)
    store = verification.Store([load_cert(ca)])
    builder = verification.PolicyBuilder().store(store)
    builder.build_server_verifier(subject).verify(load_cert(cert), [])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    out = tmp_path_factory.mktemp("fleet")
    return provision_fleet(out, FLEET, 2, broker_host="broker.example.org", broker_port=18883)


def test_layout_and_permissions(fleet: ProvisionResult) -> None:
    root = fleet.out_dir
    assert sorted(fleet.devices) == ["dev-0001", "dev-0002"]
    assert mode(root / "private") == 0o700
    secrets = [
        root / "private/ca.key",
        root / "mosquitto/broker.key",
        root / "server/client.key",
        root / "server/signing.key",
        root / "server/enrolment.key",
        root / "server/http.key",
    ]
    for folder in fleet.devices.values():
        assert mode(folder) == 0o700
        secrets += [folder / "client.key", folder / "identity.key"]
        for name in (
            "client.crt",
            "ca.crt",
            "identity.pub",
            "server_signing.pub",
            "enrolment.pub",
            "device.toml",
        ):
            assert (folder / name).is_file(), folder / name
    for path in secrets:
        assert mode(path) == 0o600, path
    for name in ("client.crt", "ca.crt", "signing.pub", "enrolment.pub", "server.toml"):
        assert (root / "server" / name).is_file()
    for name in ("mosquitto.conf", "acl", "broker.crt"):
        assert (root / "mosquitto" / name).is_file()
    assert not (root / "mosquitto/passwd").exists()  # cert mode has no passwords


def test_certificates_chain_to_the_ca(fleet: ProvisionResult) -> None:
    ca = fleet.ca_cert
    assert load_cert(ca).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for device_id, folder in fleet.devices.items():
        verify_client(ca, folder / "client.crt")
        assert common_name(load_cert(folder / "client.crt")) == device_id
        assert (folder / "ca.crt").read_bytes() == ca.read_bytes()
    server_crt = fleet.out_dir / "server/client.crt"
    verify_client(ca, server_crt)
    assert common_name(load_cert(server_crt)) == server_account(FLEET)
    broker_crt = fleet.out_dir / "mosquitto/broker.crt"
    for host in ("127.0.0.1", "localhost", "broker.example.org"):
        verify_server(ca, broker_crt, host)
    with pytest.raises(verification.VerificationError):
        verify_server(ca, broker_crt, "elsewhere.example.org")
    # A device certificate is not a server certificate and vice versa.
    with pytest.raises(verification.VerificationError):
        verify_server(ca, fleet.devices["dev-0001"] / "client.crt", "localhost")
    with pytest.raises(verification.VerificationError):
        verify_client(ca, broker_crt)


def test_device_toml_loads_and_points_at_real_files(fleet: ProvisionResult) -> None:
    signing_pub = (fleet.out_dir / "server/signing.pub").read_bytes()
    for device_id, folder in fleet.devices.items():
        cfg = load_device_config(folder / "device.toml")
        assert (cfg.device_id, cfg.fleet) == (device_id, FLEET)
        assert cfg.broker.tls and cfg.broker.host == "broker.example.org"
        assert cfg.broker.port == 18883
        assert cfg.broker.password is None
        for path in (cfg.broker.ca_file, cfg.broker.cert_file, cfg.broker.key_file):
            assert path is not None and path.is_file()
        assert cfg.identity_key_file is not None and cfg.server_signing_key_file is not None
        identity = serialization.load_pem_private_key(
            cfg.identity_key_file.read_bytes(), password=None
        )
        assert isinstance(identity, ed25519.Ed25519PrivateKey)
        published = serialization.load_pem_public_key((folder / "identity.pub").read_bytes())
        assert published == identity.public_key()
        assert cfg.server_signing_key_file.read_bytes() == signing_pub
        assert cfg.state_dir == folder / "state"


def test_server_toml_and_signing_keys(fleet: ProvisionResult) -> None:
    folder = fleet.server_config.parent
    raw = tomllib.loads(fleet.server_config.read_text())
    assert raw["fleet"]["name"] == FLEET
    assert raw["broker"]["url"] == "mqtts://broker.example.org:18883"
    assert raw["broker"]["username"] == server_account(FLEET)
    assert "password" not in raw["broker"]
    for table, key in [
        ("broker", "ca_file"),
        ("broker", "cert_file"),
        ("broker", "key_file"),
        ("signing", "key_file"),
        ("http", "cert_file"),
        ("http", "key_file"),
    ]:
        assert (folder / raw[table][key]).is_file(), (table, key)
    signing = serialization.load_pem_private_key(
        (folder / raw["signing"]["key_file"]).read_bytes(), password=None
    )
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    signature = signing.sign(b"artifact digest")
    device_view = serialization.load_pem_public_key(
        (fleet.devices["dev-0001"] / "server_signing.pub").read_bytes()
    )
    assert isinstance(device_view, ed25519.Ed25519PublicKey)
    device_view.verify(signature, b"artifact digest")
    verify_server(fleet.ca_cert, folder / "http.crt", "127.0.0.1")


def test_broker_config_and_acl(fleet: ProvisionResult) -> None:
    conf = fleet.mosquitto_conf.read_text().splitlines()
    assert "listener 18883" in conf  # a public broker host binds every interface
    for line in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "user root",
        "persistence true",
    ):
        assert line in conf
    assert "max_queued_messages 20000" in conf and "max_inflight_messages 100" in conf
    acl = [
        ln
        for ln in (fleet.out_dir / "mosquitto/acl").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    base = f"fedge/v1/{FLEET}"
    assert acl == [
        f"pattern write {base}/dev/%u/up",
        f"pattern write {base}/dev/%u/presence",
        f"pattern read {base}/dev/%u/down",
        f"pattern read {base}/broadcast",
        f"pattern read {base}/wake/+",
        f"user {server_account(FLEET)}",
        f"topic readwrite {base}/#",
    ]


def test_add_devices_keeps_ca_and_earlier_devices(tmp_path: Path) -> None:
    result = provision_fleet(tmp_path, FLEET, 2)
    ca_before = result.ca_cert.read_bytes()
    first_cert = (result.devices["dev-0001"] / "client.crt").read_bytes()
    assert add_devices(tmp_path, 2) == ["dev-0003", "dev-0004"]
    assert add_devices(tmp_path, ["kitchen-pi"]) == ["kitchen-pi"]
    assert result.ca_cert.read_bytes() == ca_before
    assert (result.devices["dev-0001"] / "client.crt").read_bytes() == first_cert
    for device_id in ("dev-0001", "dev-0002", "dev-0003", "dev-0004", "kitchen-pi"):
        folder = tmp_path / "devices" / device_id
        verify_client(result.ca_cert, folder / "client.crt")
        assert load_device_config(folder / "device.toml").device_id == device_id
    record = (tmp_path / "fleet.json").read_text()
    assert "kitchen-pi" in record and "dev-0004" in record
    with pytest.raises(ConfigError, match="already used"):
        add_devices(tmp_path, ["dev-0002"])
    with pytest.raises(ConfigError, match="already used"):
        add_devices(tmp_path, ["x1", "x1"])
    with pytest.raises(ConfigError, match="invalid device id"):
        add_devices(tmp_path, ["bad/id"])


def test_password_mode_writes_mosquitto_hashes(tmp_path: Path) -> None:
    result = provision_fleet(tmp_path, FLEET, 1, auth="password")
    add_devices(tmp_path, 1)
    entries = read_password_file(tmp_path / "mosquitto/passwd")
    assert mode(tmp_path / "mosquitto/passwd") == 0o600
    assert sorted(entries) == ["dev-0001", "dev-0002", server_account(FLEET)]
    conf = result.mosquitto_conf.read_text()
    assert f"password_file {tmp_path.resolve()}/mosquitto/passwd" in conf
    assert "require_certificate false" in conf
    for device_id in ("dev-0001", "dev-0002"):
        folder = tmp_path / "devices" / device_id
        cfg = load_device_config(folder / "device.toml")
        assert cfg.broker.username == device_id and cfg.broker.password
        assert cfg.broker.cert_file is None and not (folder / "client.key").exists()
        assert mode(folder / "device.toml") == 0o600
        assert check_hash(cfg.broker.password, entries[device_id])
    server_pw = tomllib.loads(result.server_config.read_text())["broker"]["password"]
    assert check_hash(server_pw, entries[server_account(FLEET)])
    assert not check_hash(server_pw, entries["dev-0001"])


def check_hash(password: str, hashed: str) -> bool:
    """Mosquitto's $7$ check, recomputed independently: PBKDF2-SHA512 over a 12-byte salt."""
    empty, seven, iterations, salt_b64, digest_b64 = hashed.split("$")
    assert (empty, seven) == ("", "7")
    salt = base64.b64decode(salt_b64)
    assert len(salt) == 12 and len(base64.b64decode(digest_b64)) == 64
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations))
    return digest == base64.b64decode(digest_b64)


@settings(max_examples=20, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9@._-]{1,20}", fullmatch=True),
        st.text(min_size=1, max_size=30),
        max_size=4,
    )
)
def test_password_file_round_trip(
    tmp_path_factory: pytest.TempPathFactory, accounts: dict[str, str]
) -> None:
    path = tmp_path_factory.mktemp("pw") / "passwd"
    hashed = {user: hash_password(pw, iterations=10) for user, pw in accounts.items()}
    path.write_text(render_password_file(hashed))
    back = read_password_file(path)
    assert back == hashed
    for user, pw in accounts.items():
        assert check_hash(pw, back[user])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fleet": "no spaces"}, "invalid fleet"),
        ({"devices": -1}, "non-negative"),
        ({"devices": ["ok", "not ok"]}, "invalid device id"),
        ({"broker_port": 0}, "broker_port"),
        ({"broker_host": "bad host!"}, "invalid host name"),
        ({"auth": "psk"}, "auth must be"),
        ({"http_url": "ftp://x"}, "http_url"),
    ],
)
def test_bad_arguments_raise_config_error(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"out_dir": tmp_path, "fleet": FLEET, "devices": 1} | kwargs
    with pytest.raises(ConfigError, match=message):
        provision_fleet(**args)  # type: ignore[arg-type]
    assert not (tmp_path / "ca.crt").exists()


def test_refuses_to_overwrite_and_to_add_to_nothing(tmp_path: Path) -> None:
    provision_fleet(tmp_path / "f", FLEET, 1)
    with pytest.raises(ConfigError, match="already holds a fleet"):
        provision_fleet(tmp_path / "f", FLEET, 1)
    with pytest.raises(ConfigError, match="fleet.json not found"):
        add_devices(tmp_path / "empty", 1)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert (
        main(
            [
                "--out",
                str(out),
                "--fleet",
                "beta",
                "--devices",
                "2",
                "--auth",
                "password",
                "--broker-port",
                "9883",
            ]
        )
        == 0
    )
    assert "mosquitto -c" in capsys.readouterr().out
    assert main(["--out", str(out), "--devices", "pi-a,pi-b", "--add"]) == 0
    assert sorted(p.name for p in (out / "devices").iterdir()) == [
        "dev-0001",
        "dev-0002",
        "pi-a",
        "pi-b",
    ]
    assert load_device_config(out / "devices/pi-b/device.toml").broker.port == 9883
    assert main(["--out", str(out), "--fleet", "beta", "--devices", "1"]) == 2
    assert "already holds a fleet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(out), "--devices", "1", "--add", "--auth", "cert"])
    assert stop.value.code == 2
