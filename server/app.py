"""Assembles a running server: broker link (or embedded broker), store, HTTP app and the job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import uvicorn

from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.data import load_local_dataset
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.mqtt_link import LinkSettings, MqttLink
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.server.blobs import BlobStore
from fedge.server.broker import EmbeddedBroker, free_port
from fedge.server.coordinator import Coordinator
from fedge.server.http_app import TrafficCounter, create_app
from fedge.server.job import JobConfig
from fedge.server.store import Store

log = logging.getLogger("fedge.server")


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps state, which broker it uses, where it serves HTTP."""

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

    @property
    def http_url(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"


def load_server_settings(path: Path, **overrides: Any) -> ServerSettings:
    """Read a `server.toml` (as written by `fedge provision`); keyword overrides win."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (FileNotFoundError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read server config {path}: {exc}") from exc
    base = Path(path).resolve().parent
    broker = raw.get("broker", {})
    signing = raw.get("signing", {})
    http = raw.get("http", {})
    enrolment = raw.get("enrolment", {})
    public = urlparse(http["url"]) if "url" in http else None

    def rel(value: str | None) -> Path | None:
        if value is None:
            return None
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
        signing_key_file=rel(signing.get("key_file")),
        enrolment_key_file=rel(enrolment.get("key_file")),
        http_host=http.get("host", public.hostname if public else "127.0.0.1"),
        http_port=int(http.get("port", public.port if public and public.port else 8080)),
        public_url=http.get("url"),
        http_cert_file=rel(http.get("cert_file")),
        http_key_file=rel(http.get("key_file")),
        fleet=raw.get("fleet", {}).get("name"),
        api_tokens=dict(raw.get("api", {}).get("tokens", {})),
    )
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


class FedgeServer:
    """One server process for one fleet: runs the job it was started with, then jobs posted to the API."""

    def __init__(
        self, job: JobConfig | None, settings: ServerSettings, *, exit_when_done: bool = True
    ):
        fleet = job.fleet if job is not None else settings.fleet
        if fleet is None:
            raise ConfigError(
                "the server needs a fleet: from the job or from server.toml [fleet] name"
            )
        if job is not None and settings.fleet is not None and settings.fleet != job.fleet:
            raise ConfigError(
                f"job fleet {job.fleet!r} differs from the server's fleet {settings.fleet!r}"
            )
        self.fleet = fleet
        self.job = job
        self.settings = settings
        self.exit_when_done = exit_when_done
        self.broker: EmbeddedBroker | None = None
        self.traffic = TrafficCounter()
        self.coordinator: Coordinator | None = None
        self.link: MqttLink | None = None
        self.ready = asyncio.Event()
        self.http_port = settings.http_port or free_port(settings.http_host)
        self._store: Store | None = None
        self._blobs: BlobStore | None = None
        self._key: Any = None
        self._job_task: asyncio.Task[None] | None = None
        self._job_changed = asyncio.Event()

    @property
    def dashboard_url(self) -> str:
        scheme = "https" if self.settings.http_cert_file else "http"
        return f"{scheme}://{self.settings.http_host}:{self.http_port}/"

    def _link_settings(self, broker_url: str) -> LinkSettings:
        s = self.settings
        parsed = urlparse(broker_url)
        return LinkSettings(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (8883 if parsed.scheme == "mqtts" else 1883),
            client_id=f"fedge-server-{self.fleet}",
            username=s.broker_username,
            password=s.broker_password,
            ca_file=s.ca_file,
            cert_file=s.cert_file,
            key_file=s.key_file,
            tls=parsed.scheme == "mqtts",
            subscriptions=(
                topics.server_up_filter(self.fleet),
                topics.server_presence_filter(self.fleet),
            ),
            max_inflight=1000,
        )

    # jobs ----------------------------------------------------------------------------------
    def submit_job(self, job: JobConfig) -> Coordinator:
        """Start ``job`` now; RuntimeError while another job is active."""
        if self.coordinator is not None and not self.coordinator.finished.is_set():
            raise RuntimeError(
                f"job {self.coordinator.job.name!r} is still {self.coordinator.status}"
            )
        if job.fleet != self.fleet:
            raise ConfigError(
                f"job fleet {job.fleet!r} differs from this server's fleet {self.fleet!r}"
            )
        assert self._store is not None and self._blobs is not None
        central = None
        if job.evaluation.central_data:
            central = load_local_dataset(Path(job.evaluation.central_data))
        previous_online = self.coordinator.online if self.coordinator is not None else set()
        coordinator = Coordinator(
            job,
            load_artifact(job.artifact),
            self._store,
            self._blobs,
            self._key,
            self.settings.public_url or self.dashboard_url.rstrip("/"),
            publish=self._publish,
            central_data=central,
            served_bytes=lambda: self.traffic.bytes_served,
            expect_devices=self.settings.expect_devices,
            enrolment_key=self._enrolment_public_key(),
        )
        coordinator.online |= previous_online
        self.job, self.coordinator = job, coordinator
        self._job_task = asyncio.create_task(self._run_job(coordinator), name=f"job-{job.name}")
        self._job_changed.set()
        return coordinator

    def _enrolment_public_key(self) -> Any:
        """The fleet enrolment authority's public key (devices' identity certificates), if any."""
        path = self.settings.enrolment_key_file
        if path is None:
            return None
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return key.public_key()

    async def _run_job(self, coordinator: Coordinator) -> None:
        await coordinator.run()
        await self._publish(
            topics.broadcast(self.fleet),
            m.make(m.JobState(state=coordinator.status), job_id=coordinator.job.name).pack(),
        )
        self._job_changed.set()

    async def _publish(self, topic: str, data: bytes, qos: int = 1) -> bool:
        return await self.link.publish(topic, data, qos=qos) if self.link is not None else False

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if self.coordinator is not None:
            await self.coordinator.on_message(topic, payload)
        else:
            log.debug("no job yet: ignored a message on %s", topic)

    # the process ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> str:
        """Serve until the job ends (or, with ``exit_when_done=False``, until ``stop``)."""
        stop = stop or asyncio.Event()
        s = self.settings
        broker_url = s.broker_url
        if broker_url is None:
            self.broker = EmbeddedBroker()
            self.broker.start()
            broker_url = self.broker.url
            log.info("no broker URL given: started the embedded amqtt broker on %s", broker_url)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self._store = Store(s.state_dir / "fedge.db")
        self._blobs = BlobStore(s.state_dir / "blobs")
        self._key = load_or_create_signing_key(s.signing_key_file or s.state_dir / "signing.key")
        link_stop = asyncio.Event()
        self.link = MqttLink(self._link_settings(broker_url), logger=log)
        app = create_app(self._blobs, self.traffic)
        from fedge.server.api import mount_api  # the management API and dashboard

        mount_api(app.api, self._store, self, s.api_tokens)
        tls: dict[str, Any] = {}
        if s.http_cert_file and s.http_key_file:
            tls = {"ssl_certfile": str(s.http_cert_file), "ssl_keyfile": str(s.http_key_file)}
        http = uvicorn.Server(
            uvicorn.Config(
                app,
                host=s.http_host,
                port=self.http_port,
                log_level="warning",
                lifespan="off",
                **tls,
            )
        )
        tasks = [
            asyncio.create_task(self.link.run(self._on_message, link_stop), name="mqtt"),
            asyncio.create_task(http.serve(), name="http"),
        ]
        try:
            await asyncio.wait_for(self.link.connected.wait(), timeout=30)
            if self.job is not None:
                self.submit_job(self.job)
            self.ready.set()
            while not stop.is_set():
                self._job_changed.clear()
                done = (
                    self.coordinator is not None
                    and self.coordinator.finished.is_set()
                    and (self._job_task is None or self._job_task.done())
                )
                if done and self.exit_when_done:
                    break
                changed = asyncio.create_task(self._job_changed.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({changed, stopper}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                stopper.cancel()
                if self._job_task is not None and self._job_task.done():
                    self._job_task.result()  # surface a crash of the job loop
            return self.coordinator.status if self.coordinator is not None else "idle"
        finally:
            if self._job_task is not None and not self._job_task.done():
                self._job_task.cancel()
            http.should_exit = True
            link_stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=10)
            self._store.close()
            if self.broker is not None:
                self.broker.stop()
