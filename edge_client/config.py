"""Device configuration (`device.toml`): the one file a flashed device needs."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedge.edge_client.eligibility import EligibilityRules
from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.protocol.topics import check_name

# MQTT keepalive of a device: an idle session pings once a minute (paho's default, and short of
# the 2-5 minute idle timeouts of carrier NATs). Dropouts are noticed by round deadlines, so a
# shorter keepalive would only cost fleet-wide pings and battery.
DEFAULT_KEEPALIVE_S = 60


@dataclass(frozen=True)
class BrokerConfig:
    """How the device reaches the MQTT broker."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = DEFAULT_KEEPALIVE_S

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
class DataConfig:
    """Where the device's own data lives (a directory of .npz files or IDX files)."""

    train: Path
    test: Path | None = None


@dataclass(frozen=True)
class DeviceConfig:
    """Everything `fedge device` reads from `device.toml`."""

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


def _path(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty path string")
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def _opt_path(base: Path, table: dict[str, Any], key: str, where: str) -> Path | None:
    return _path(base, table[key], f"{where}.{key}") if key in table else None


def _rules(table: Any) -> EligibilityRules:
    if not isinstance(table, dict):
        raise ConfigError("[eligibility] must be a table")
    known = set(EligibilityRules.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown eligibility keys: {sorted(unknown)}")
    for key, value in table.items():
        if key.startswith("require_") and not isinstance(value, bool):
            raise ConfigError(f"eligibility.{key} must be true or false")
        if not key.startswith("require_") and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise ConfigError(f"eligibility.{key} must be a number")
    rules = EligibilityRules(**table)
    if not 0.0 <= rules.min_battery <= 1.0 or rules.min_free_memory_mb < 0:
        raise ConfigError("eligibility.min_battery must be in [0, 1] and min_free_memory_mb >= 0")
    return rules


def parse_device_config(raw: dict[str, Any], base_dir: Path) -> DeviceConfig:
    """Validate a parsed `device.toml`; relative paths are resolved against ``base_dir``."""
    for table in ("device", "broker", "data"):
        if table not in raw:
            raise ConfigError(f"device.toml is missing the [{table}] table")
        if not isinstance(raw[table], dict):
            raise ConfigError(f"[{table}] must be a table")
    dev, broker, data = raw["device"], raw["broker"], raw["data"]
    try:
        device_id = check_name("device id", dev.get("id", ""))
        fleet = check_name("fleet", dev.get("fleet", ""))
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    url = broker.get("url")
    if not isinstance(url, str) or urlparse(url).scheme not in ("mqtt", "mqtts"):
        raise ConfigError("broker.url must look like mqtt://host:port or mqtts://host:port")
    try:
        port = urlparse(url).port
    except ValueError as exc:
        raise ConfigError(f"broker.url has an invalid port: {exc}") from exc
    if port == 0:
        raise ConfigError("broker.url port must be 1-65535")
    keepalive = broker.get("keepalive_s", DEFAULT_KEEPALIVE_S)
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 5 <= keepalive <= 3600:
        raise ConfigError("broker.keepalive_s must be an integer between 5 and 3600")
    identity = raw.get("identity", {})
    server = raw.get("server", {})
    if not isinstance(identity, dict) or not isinstance(server, dict):
        raise ConfigError("[identity] and [server] must be tables")
    return DeviceConfig(
        device_id=device_id,
        fleet=fleet,
        state_dir=_path(base_dir, dev.get("state_dir", "state"), "device.state_dir"),
        profile=dev.get("profile"),
        broker=BrokerConfig(
            url=url,
            username=broker.get("username"),
            password=broker.get("password"),
            ca_file=_opt_path(base_dir, broker, "ca_file", "broker"),
            cert_file=_opt_path(base_dir, broker, "cert_file", "broker"),
            key_file=_opt_path(base_dir, broker, "key_file", "broker"),
            keepalive_s=keepalive,
        ),
        data=DataConfig(
            train=_path(base_dir, data.get("train"), "data.train"),
            test=_opt_path(base_dir, data, "test", "data"),
        ),
        identity_key_file=_opt_path(base_dir, identity, "key_file", "identity"),
        identity_cert_file=_opt_path(base_dir, identity, "cert_file", "identity"),
        server_signing_key_file=_opt_path(base_dir, server, "signing_public_key", "server"),
        enrolment_key_file=_opt_path(base_dir, server, "enrolment_public_key", "server"),
        eligibility=_rules(raw.get("eligibility", {})),
    )


def load_device_config(path: Path) -> DeviceConfig:
    """Read and validate a `device.toml` file."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"device config not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_device_config(raw, Path(path).resolve().parent)
