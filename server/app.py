"""Assembles a running server: broker link (or embedded broker), store, HTTP app and the job.

`FedgeServer` is also the web layer's `ServerControl`: it answers with snapshots of the job
and round in progress and carries out the operator's actions on the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from fedge.edge_client.trainer import LocalTrainer
from fedge.edge_client.weights import unpack_weights
from fedge.server.blobs import BlobStore
from fedge.server.broker import EmbeddedBroker, free_port
from fedge.server.control import (
    ActiveJob,
    JobConflict,
    JobNotFound,
    LiveRound,
    ModelSnapshot,
    Traffic,
)
from fedge.server.coordinator import Coordinator
from fedge.server.job import JobConfig
from fedge.server.settings import ServerSettings
from fedge.server.store import SQLiteStore, Store
from fedge.server.web.api import mount_api
from fedge.server.web.http_app import TrafficCounter, create_app

log = logging.getLogger("fedge.server")


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
        self.traffic_counter = TrafficCounter()
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

    @property
    def store(self) -> Store:
        """The server's store (open while the server runs)."""
        assert self._store is not None, "the server is not running"
        return self._store

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

    # ServerControl -----------------------------------------------------------------------
    def _active(self, job_id: str | None = None) -> Coordinator | None:
        c = self.coordinator
        if c is None or c.runtime.finished.is_set():
            return None
        return c if job_id is None or c.job.name == job_id else None

    def active_job(self) -> ActiveJob | None:
        c = self.coordinator
        if c is None:
            return None
        status = (
            "paused" if c.runtime.status == "running" and c.runtime.paused else c.runtime.status
        )
        return ActiveJob(name=c.job.name, status=status, rounds_total=c.job.rounds)

    def live_round(self) -> LiveRound | None:
        c = self.coordinator
        rnd = c.runtime.current if c is not None else None
        return rnd.snapshot() if rnd is not None else None

    def traffic(self) -> Traffic:
        stats = self.link.stats if self.link is not None else None
        return Traffic(
            http_bytes_served=self.traffic_counter.bytes_served,
            mqtt_bytes_sent=stats.bytes_sent if stats else None,
            mqtt_bytes_received=stats.bytes_received if stats else None,
            mqtt_connects=stats.connects if stats else None,
        )

    async def submit(self, job: JobConfig) -> None:
        self.submit_job(job)

    def _control(self, job_id: str) -> Coordinator:
        c = self._active(job_id)
        if c is None:
            row = self.store.job(job_id)
            status = row["status"] if row else "unknown"
            raise JobConflict(f"job {job_id!r} is not running (status {status})")
        return c

    def pause(self, job_id: str) -> None:
        self._control(job_id).pause()

    def resume(self, job_id: str) -> None:
        self._control(job_id).resume()

    def stop(self, job_id: str) -> None:
        self._control(job_id).stop("stopped by operator through the API")

    def model(self, job_id: str, round_number: int | None) -> ModelSnapshot:
        row = self.store.job(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        c = self.coordinator
        live = c is not None and c.job.name == job_id
        if round_number is None and c is not None and live:
            weights = list(c.checkpoints.weights)
            return ModelSnapshot(
                c.artifact, weights, f"job {job_id} after round {row['committed_round']}"
            )
        artifact = (
            c.artifact if c is not None and live else load_artifact(Path(row["config"]["artifact"]))
        )
        if round_number is None:
            sha, round_number = row["weights_sha"], row["committed_round"]
        else:
            sha = self.store.checkpoint_weights(job_id, round_number)
            if sha is None:
                raise JobNotFound(f"job {job_id!r} has no checkpoint for round {round_number}")
        if sha is None:  # nothing committed yet: the artifact's own initial weights
            initial = LocalTrainer(artifact).get_weights()
            return ModelSnapshot(artifact, initial, f"job {job_id} before its first round")
        assert self._blobs is not None
        if not self._blobs.has(sha):
            raise JobNotFound(f"weights {sha} of job {job_id!r} are not in the blob store")
        shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        weights = unpack_weights(self._blobs.get(sha), shapes)
        return ModelSnapshot(artifact, weights, f"job {job_id} after round {round_number}")

    # jobs ----------------------------------------------------------------------------------
    def submit_job(self, job: JobConfig) -> Coordinator:
        """Start ``job`` now; JobConflict while another job is active."""
        if self._active() is not None:
            assert self.coordinator is not None
            raise JobConflict(
                f"job {self.coordinator.job.name!r} is still {self.coordinator.runtime.status}"
            )
        if job.fleet != self.fleet:
            raise ConfigError(
                f"job fleet {job.fleet!r} differs from this server's fleet {self.fleet!r}"
            )
        assert self._store is not None and self._blobs is not None
        central = None
        if job.evaluation.central_data:
            central = load_local_dataset(Path(job.evaluation.central_data))
        previous = self.coordinator.runtime.online if self.coordinator is not None else set()
        enrolment = self.settings.enrolment_key_file
        coordinator = Coordinator(
            job,
            load_artifact(job.artifact),
            self._store,
            self._blobs,
            self._key,
            self.settings.public_url or self.dashboard_url.rstrip("/"),
            publish=self._publish,
            central_data=central,
            served_bytes=lambda: self.traffic_counter.bytes_served,
            expect_devices=self.settings.expect_devices,
            enrolment_key=_enrolment_public_key(enrolment) if enrolment else None,
        )
        coordinator.runtime.online |= previous
        self.job, self.coordinator = job, coordinator
        self._job_task = asyncio.create_task(self._run_job(coordinator), name=f"job-{job.name}")
        self._job_changed.set()
        return coordinator

    async def _run_job(self, coordinator: Coordinator) -> None:
        await coordinator.run()
        await self._publish(
            topics.broadcast(self.fleet),
            m.make(
                m.JobState(state=coordinator.runtime.status), job_id=coordinator.job.name
            ).pack(),
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
        self._store = SQLiteStore(s.state_dir / "fedge.db")
        self._blobs = BlobStore(s.state_dir / "blobs")
        self._key = load_or_create_signing_key(s.signing_key_file or s.state_dir / "signing.key")
        link_stop = asyncio.Event()
        self.link = MqttLink(self._link_settings(broker_url), logger=log)
        app = create_app(self._blobs, self.traffic_counter)
        mount_api(
            app.api,
            self._store,
            self,
            state_dir=s.state_dir,
            http_host=s.http_host,
            api_tokens=s.api_tokens,
        )
        http = uvicorn.Server(uvicorn.Config(app, **self._uvicorn_options()))
        tasks = [
            asyncio.create_task(self.link.run(self._on_message, link_stop), name="mqtt"),
            asyncio.create_task(http.serve(), name="http"),
        ]
        try:
            await asyncio.wait_for(self.link.connected.wait(), timeout=30)
            if self.job is not None:
                self.submit_job(self.job)
            self.ready.set()
            await self._serve_jobs(stop)
            c = self.coordinator
            return c.runtime.status if c is not None else "idle"
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

    def _uvicorn_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {
            "host": s.http_host,
            "port": self.http_port,
            "log_level": "warning",
            "lifespan": "off",
        }
        if s.http_cert_file and s.http_key_file:
            options |= {"ssl_certfile": str(s.http_cert_file), "ssl_keyfile": str(s.http_key_file)}
        return options

    async def _serve_jobs(self, stop: asyncio.Event) -> None:
        """Until ``stop``, or until the job ends when the server exits with its job."""
        while not stop.is_set():
            self._job_changed.clear()
            c = self.coordinator
            done = (
                c is not None
                and c.runtime.finished.is_set()
                and (self._job_task is None or self._job_task.done())
            )
            if done and self.exit_when_done:
                return
            changed = asyncio.create_task(self._job_changed.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({changed, stopper}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stopper.cancel()
            if self._job_task is not None and self._job_task.done():
                self._job_task.result()  # surface a crash of the job loop


def _enrolment_public_key(path: Path) -> Any:
    """The fleet enrolment authority's public key (devices' identity certificates).

    Reads the private key file the server is configured with, as it always has (the
    privacy issue moves the enrolment authority out of the server).
    """
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key()
