"""The fleet record `fleet.json`: what was provisioned, so devices can be added later."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast, get_args

from fedge.edge_client.errors import ConfigError
from fedge.tools.provision.files import write_file
from fedge.tools.provision.mosquitto import AuthMode

SPEC_VERSION = 1


@dataclass(frozen=True)
class FleetSpec:
    """Settings fixed at provisioning time plus the ids of every provisioned device."""

    fleet: str
    broker_host: str
    broker_port: int
    auth: AuthMode
    http_url: str
    server_user: str
    devices: tuple[str, ...]

    @property
    def broker_url(self) -> str:
        """``mqtts://host:port`` (IPv6 literals in brackets)."""
        host = f"[{self.broker_host}]" if ":" in self.broker_host else self.broker_host
        return f"mqtts://{host}:{self.broker_port}"


def save_spec(path: Path, spec: FleetSpec) -> None:
    """Write ``spec`` as JSON (atomically)."""
    data = {"version": SPEC_VERSION, **asdict(spec), "devices": list(spec.devices)}
    write_file(path, json.dumps(data, indent=2) + "\n")


def load_spec(path: Path) -> FleetSpec:
    """Read a fleet record written by :func:`save_spec`.

    Raises
    ------
    ConfigError
        If the file is missing, not JSON, or lacks a field.
    """
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found: run `fedge provision` without --add first") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable fleet record: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("version") != SPEC_VERSION:
        raise ConfigError(f"{path}: not a version {SPEC_VERSION} fleet record")
    try:
        auth = raw["auth"]
        if auth not in get_args(AuthMode):
            raise ConfigError(f"{path}: unknown auth mode {auth!r}")
        return FleetSpec(
            fleet=str(raw["fleet"]),
            broker_host=str(raw["broker_host"]),
            broker_port=int(raw["broker_port"]),
            auth=cast(AuthMode, auth),
            http_url=str(raw["http_url"]),
            server_user=str(raw["server_user"]),
            devices=tuple(str(d) for d in raw["devices"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: fleet record lacks or garbles a field: {exc}") from exc
