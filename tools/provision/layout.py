"""Where each provisioned file lives inside the output directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FleetLayout:
    """Paths of one provisioned fleet under ``root`` (always absolute)."""

    root: Path

    @classmethod
    def at(cls, out_dir: Path) -> FleetLayout:
        """Layout rooted at ``out_dir``, made absolute (Mosquitto needs absolute paths)."""
        return cls(Path(out_dir).expanduser().resolve())

    @property
    def spec_file(self) -> Path:
        """What was provisioned (fleet, broker, auth mode, device ids), no secrets."""
        return self.root / "fleet.json"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    @property
    def ca_key(self) -> Path:
        return self.private_dir / "ca.key"

    @property
    def mosquitto_dir(self) -> Path:
        return self.root / "mosquitto"

    @property
    def mosquitto_conf(self) -> Path:
        return self.mosquitto_dir / "mosquitto.conf"

    @property
    def broker_cert(self) -> Path:
        return self.mosquitto_dir / "broker.crt"

    @property
    def broker_key(self) -> Path:
        return self.mosquitto_dir / "broker.key"

    @property
    def acl_file(self) -> Path:
        return self.mosquitto_dir / "acl"

    @property
    def password_file(self) -> Path:
        return self.mosquitto_dir / "passwd"

    @property
    def persistence_dir(self) -> Path:
        return self.mosquitto_dir / "data"

    @property
    def broker_log(self) -> Path:
        return self.mosquitto_dir / "mosquitto.log"

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def server_config(self) -> Path:
        return self.server_dir / "server.toml"

    @property
    def devices_dir(self) -> Path:
        return self.root / "devices"

    def device_dir(self, device_id: str) -> Path:
        """Folder copied onto device ``device_id``."""
        return self.devices_dir / device_id
