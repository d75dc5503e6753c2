"""Device configuration (`device.toml`): the one file a flashed device needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from fedge.edge_client.eligibility import EligibilityRules
from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.names import check_name
from fedge.edge_client.policy import FleetPolicy
from fedge.edge_client.tables import Settings, check, load_toml, section

# MQTT keepalive of a device: an idle session pings once a minute (paho's default, and short of
# the 2-5 minute idle timeouts of carrier NATs). Dropouts are noticed by round deadlines, so a
# shorter keepalive would only cost fleet-wide pings and battery.
DEFAULT_KEEPALIVE_S = 60
PATH_KEYS = {  # the keys of each table that name files, relative to device.toml's folder
    "broker": ("ca_file", "cert_file", "key_file"),
    "data": ("train", "test"),
    "identity": ("key_file", "cert_file"),
    "server": ("signing_public_key", "enrolment_public_key"),
}


@dataclass(frozen=True)
class BrokerConfig(Settings):
    """How the device reaches the MQTT broker."""

    SECTION: ClassVar[str] = "broker"
    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = DEFAULT_KEEPALIVE_S

    def check(self) -> None:
        check(
            urlparse(self.url).scheme in ("mqtt", "mqtts"),
            "broker.url must look like mqtt://host:port or mqtts://host:port",
        )
        try:
            port = urlparse(self.url).port
        except ValueError as exc:
            raise ConfigError(f"broker.url has an invalid port: {exc}") from exc
        check(port != 0, "broker.url port must be 1-65535")
        check(
            5 <= self.keepalive_s <= 3600,
            "broker.keepalive_s must be an integer between 5 and 3600",
        )

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"


@dataclass(frozen=True)
class DataConfig(Settings):
    """Where the device's own data lives (a directory of .npz files or IDX files)."""

    SECTION: ClassVar[str] = "data"
    train: Path
    test: Path | None = None


@dataclass(frozen=True)
class IdentityFiles(Settings):
    """The device's identity key and certificate (``[identity]``)."""

    SECTION: ClassVar[str] = "identity"
    key_file: Path | None = None
    cert_file: Path | None = None


@dataclass(frozen=True)
class ServerKeys(Settings):
    """The public keys the device checks the server's blobs and its peers against."""

    SECTION: ClassVar[str] = "server"
    signing_public_key: Path | None = None
    enrolment_public_key: Path | None = None


@dataclass(frozen=True)
class DeviceConfig(Settings):
    """Everything `fedge device` reads from `device.toml`."""

    SECTION: ClassVar[str] = "device"
    device_id: str
    fleet: str
    state_dir: Path
    broker: BrokerConfig
    data: DataConfig
    identity_key_file: Path | None = None
    identity_cert_file: Path | None = None
    server_signing_key_file: Path | None = None
    enrolment_key_file: Path | None = None
    eligibility: EligibilityRules = field(default_factory=EligibilityRules)
    profile: str | None = None
    policy: FleetPolicy = field(default_factory=FleetPolicy)

    def check(self) -> None:
        try:
            check_name("device id", self.device_id)
            check_name("fleet", self.fleet)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc


def _resolve(base: Path, value: Any, where: str) -> Path:
    check(isinstance(value, str) and bool(value), f"{where} must be a non-empty path string")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _paths(raw: dict[str, Any], name: str, base: Path) -> dict[str, Any]:
    """Table ``[name]`` with its file names resolved against ``base``."""
    table = dict(section(raw, name))
    for key in PATH_KEYS[name]:
        if key in table:
            table[key] = _resolve(base, table[key], f"{name}.{key}")
    return table


def parse_device_config(raw: dict[str, Any], base_dir: Path) -> DeviceConfig:
    """Validate a parsed `device.toml`; relative paths are resolved against ``base_dir``."""
    for name in ("device", "broker", "data"):
        check(name in raw, f"device.toml is missing the [{name}] table")
    device = section(raw, "device")
    unknown = set(device) - {"id", "fleet", "state_dir", "profile"}
    check(not unknown, f"[device] has unknown keys {sorted(unknown)}")
    data = _paths(raw, "data", base_dir)
    check("train" in data, "data.train must be a non-empty path string")
    identity = IdentityFiles.from_table(_paths(raw, "identity", base_dir))
    server = ServerKeys.from_table(_paths(raw, "server", base_dir))
    return DeviceConfig(
        device_id=device.get("id", ""),
        fleet=device.get("fleet", ""),
        state_dir=_resolve(base_dir, device.get("state_dir", "state"), "device.state_dir"),
        profile=device.get("profile"),
        broker=BrokerConfig.from_table(_paths(raw, "broker", base_dir)),
        data=DataConfig.from_table(data),
        identity_key_file=identity.key_file,
        identity_cert_file=identity.cert_file,
        server_signing_key_file=server.signing_public_key,
        enrolment_key_file=server.enrolment_public_key,
        eligibility=EligibilityRules.from_table(section(raw, "eligibility")),
        policy=FleetPolicy.from_table(section(raw, "policy")),
    )


def load_device_config(path: Path) -> DeviceConfig:
    """Read and validate a `device.toml` file."""
    return parse_device_config(load_toml(path, "device config"), Path(path).resolve().parent)
