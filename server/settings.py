"""The server's own settings (`server.toml`): where it keeps state, its broker, HTTP and keys."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.names import check_name
from fedge.edge_client.tables import Settings, check, load_toml, section

# The keys each table of server.toml may hold (`fedge provision` writes all of them).
SERVER_TABLES: dict[str, frozenset[str]] = {
    "fleet": frozenset({"name"}),
    "broker": frozenset({"url", "username", "password", "ca_file", "cert_file", "key_file"}),
    "signing": frozenset({"key_file", "public_key_file"}),
    "enrolment": frozenset({"key_file", "public_key_file"}),
    "http": frozenset({"url", "host", "port", "cert_file", "key_file"}),
    "api": frozenset({"tokens"}),
}


@dataclass(frozen=True)
class ServerSettings(Settings):
    """Where the server keeps state, which broker it uses, where it serves HTTP."""

    SECTION: ClassVar[str] = "server"
    state_dir: Path
    broker_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str | None = None
    broker_username: str | None = None
    broker_password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    signing_key_file: Path | None = None
    enrolment_key_file: Path | None = None
    http_cert_file: Path | None = None
    http_key_file: Path | None = None
    fleet: str | None = None
    expect_devices: int = 0
    api_tokens: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        check(0 <= self.http_port <= 65535, "http.port must be in [0, 65535] (0: any free port)")
        check(self.expect_devices >= 0, "expect_devices must be >= 0")
        if self.fleet is not None:
            try:
                check_name("fleet", self.fleet)
            except ProtocolError as exc:
                raise ConfigError(f"fleet.name: {exc}") from exc
        if self.broker_url is not None:
            check(
                urlparse(self.broker_url).scheme in ("mqtt", "mqtts"),
                "broker.url must look like mqtt://host:port or mqtts://host:port",
            )

    @property
    def http_url(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"


def _tables(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The known tables of a server.toml, each checked for unknown keys."""
    unknown = set(raw) - set(SERVER_TABLES) - {"state_dir"}
    check(not unknown, f"server.toml has unknown tables {sorted(unknown)}")
    tables = {name: section(raw, name) for name in SERVER_TABLES}
    for name, table in tables.items():
        extra = set(table) - SERVER_TABLES[name]
        check(
            not extra,
            f"[{name}] has unknown keys {sorted(extra)}; allowed: {sorted(SERVER_TABLES[name])}",
        )
    return tables


def load_server_settings(path: Path, **overrides: Any) -> ServerSettings:
    """Read a `server.toml` (as written by `fedge provision`); keyword overrides win.

    Paths in the file are relative to its folder; ``state_dir`` defaults to ``state`` there.
    """
    raw = load_toml(path, "server config")
    base = Path(path).resolve().parent
    t = _tables(raw)
    broker, http = t["broker"], t["http"]
    public = urlparse(http["url"]) if "url" in http else None

    def rel(value: Any) -> Path | None:
        if value is None:
            return None
        check(isinstance(value, str), f"{path}: file paths must be strings, got {value!r}")
        p = Path(value)
        return p if p.is_absolute() else base / p

    settings = ServerSettings(
        state_dir=rel(raw.get("state_dir", "state")) or base / "state",
        broker_url=broker.get("url"),
        broker_username=broker.get("username"),
        broker_password=broker.get("password"),
        ca_file=rel(broker.get("ca_file")),
        cert_file=rel(broker.get("cert_file")),
        key_file=rel(broker.get("key_file")),
        signing_key_file=rel(t["signing"].get("key_file")),
        enrolment_key_file=rel(t["enrolment"].get("key_file")),
        http_host=http.get("host", public.hostname if public else "127.0.0.1"),
        http_port=http.get("port", public.port if public and public.port else 8080),
        public_url=http.get("url"),
        http_cert_file=rel(http.get("cert_file")),
        http_key_file=rel(http.get("key_file")),
        fleet=t["fleet"].get("name"),
        api_tokens=dict(t["api"].get("tokens", {})),
    )
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
