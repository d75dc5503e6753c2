"""The device agent: an explicit state machine that checks in, trains, and reports over MQTT."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.edge_client import codec
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.config import DeviceConfig
from fedge.edge_client.eligibility import ineligibility
from fedge.edge_client.errors import (
    ArtifactError,
    CodecError,
    DataError,
    PrivacyError,
    ProtocolError,
    SecAggError,
)
from fedge.edge_client.fetch import BlobFetcher
from fedge.edge_client.identity import (
    IdentityCertificate,
    load_enrolment_public_key,
    load_or_create_identity,
    public_key_bytes,
)
from fedge.edge_client.mqtt_link import LinkSettings, MqttLink
from fedge.edge_client.privacy import clip_update, encode_distributed
from fedge.edge_client.probe import probe_eligibility
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, SERVER_ID, ReplayGuard, unpack
from fedge.edge_client.runtime import runtime_name, runtime_version
from fedge.edge_client.secagg import SecAggClient, decode_message
from fedge.edge_client.trainer import EvalResult, LocalTrainer, TrainResult
from fedge.edge_client.weights import pack_weights, unpack_weights

log = logging.getLogger("fedge.device")
T = TypeVar("T")


class AgentState(StrEnum):
    """States of a device agent."""

    OFFLINE = "offline"
    CONNECTED = "connected"
    CHECKED_IN = "checked_in"
    WAITING = "waiting"
    TRAINING = "training"
    REPORTING = "reporting"


TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    AgentState.OFFLINE: frozenset({AgentState.CONNECTED}),
    AgentState.CONNECTED: frozenset(
        {AgentState.CHECKED_IN, AgentState.WAITING, AgentState.TRAINING, AgentState.OFFLINE}
    ),
    AgentState.CHECKED_IN: frozenset({AgentState.TRAINING, AgentState.WAITING, AgentState.OFFLINE}),
    AgentState.WAITING: frozenset({AgentState.CHECKED_IN, AgentState.WAITING, AgentState.OFFLINE}),
    AgentState.TRAINING: frozenset({AgentState.REPORTING, AgentState.WAITING, AgentState.OFFLINE}),
    AgentState.REPORTING: frozenset({AgentState.WAITING, AgentState.OFFLINE}),
}


class AgentHooks:
    """Where a simulated device differs from a real one; the defaults are a real device."""

    def __init__(self, metered: bool = False):
        self.metered = metered

    def eligibility(self) -> m.Eligibility:
        return probe_eligibility(self.metered)

    def available(self) -> bool:
        """Whether the device is on and willing at all (a simulated fleet follows its trace)."""
        return True

    def drops_out(self, stage: str) -> bool:
        """Whether the device vanishes at this stage of a round (simulated dropouts)."""
        return False

    async def after_compute(self, wall_s: float) -> None:
        """Called after local training took ``wall_s`` seconds here (slow devices sleep more)."""

    async def after_transfer(self, nbytes: int, direction: str) -> None:
        """Called after ``nbytes`` crossed the network (slow links sleep more)."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def compute(self, work: Callable[[], T]) -> T:
        """Run blocking work (training, evaluation) off the event loop, which keeps serving
        the MQTT session meanwhile."""
        return await asyncio.to_thread(work)


@dataclass
class LocalData:
    """The device's own data; it never leaves the device."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


TrainerFactory = Callable[[Artifact], LocalTrainer]
PENDING_TASK = "pending_task.msg"  # the envelope of the task in progress, as the server sent it


@dataclass(frozen=True)
class Inbound:
    """A message from the server as the agent's inbox holds it."""

    message: m.Message
    job_id: str | None
    round_id: int | None
    raw: bytes  # the packed envelope as it arrived


class TrainerCache:
    """One interpreter per artifact digest, shared by every agent of a process; one job at a time.

    Also keeps the validated `Artifact` of each (model, manifest) digest pair, so agents that
    share a process parse and check a model once, not once per task.
    """

    def __init__(self) -> None:
        self._trainers: dict[str, LocalTrainer] = {}
        self._artifacts: dict[tuple[str, str], Artifact] = {}
        self.lock = asyncio.Lock()

    def artifact(self, model: bytes, manifest: bytes, digests: tuple[str, str]) -> Artifact:
        """The artifact of these (digest-verified) bytes, validated on first use only."""
        artifact = self.known(digests)
        if artifact is None:
            artifact = Artifact.from_bytes(manifest, model)
            self._artifacts[digests] = artifact
        return artifact

    def known(self, digests: tuple[str, str]) -> Artifact | None:
        """The artifact already built from the verified (model, manifest) of these digests."""
        return self._artifacts.get(digests)

    def get(self, artifact: Artifact) -> LocalTrainer:
        key = artifact.manifest.sha256
        if key not in self._trainers:
            self._trainers[key] = LocalTrainer(artifact)
        return self._trainers[key]


class DeviceAgent:
    """Runs on the device: MQTT session, check-ins, on-device training, update reporting."""

    def __init__(
        self,
        config: DeviceConfig,
        data: LocalData,
        server_key: Ed25519PublicKey,
        *,
        hooks: AgentHooks | None = None,
        trainers: TrainerCache | None = None,
        checkin_timeout_s: float = 60.0,
        seed: int | None = None,
    ):
        self.config = config
        self.data = data
        self.hooks = hooks or AgentHooks()
        self.trainers = trainers or TrainerCache()
        self.state = AgentState.OFFLINE
        self.history: list[AgentState] = [self.state]
        self.checkin_timeout_s = checkin_timeout_s
        # Two streams: training seeds depend only on the sequence of tasks (reproducible runs),
        # protocol jitter may be drawn any number of times.
        self.train_rng = random.Random(seed if seed is not None else os.urandom(8))
        self.rng = random.Random(self.train_rng.getrandbits(64))
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ssl_context = None
        if config.broker.ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(config.broker.ca_file))
        self.fetcher = BlobFetcher(self.state_dir / "cache", server_key, ssl_context=ssl_context)
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self.replay = ReplayGuard()
        self.rounds_reported = 0
        self.uplink_bytes = 0
        self.job_state: str | None = None
        self._stop = asyncio.Event()
        self._identity_key: Any = None
        dev = config.device_id
        subscriptions = (
            topics.device_down(config.fleet, dev),
            topics.broadcast(config.fleet),
            topics.wake(config.fleet, topics.wake_group(dev)),
        )
        self._own_topics = set(subscriptions)
        presence_off = m.make(m.Presence(online=False, profile=config.profile)).pack()
        b = config.broker
        self.link = MqttLink(
            LinkSettings(
                host=b.host,
                port=b.port,
                client_id=dev,
                username=b.username,
                password=b.password,
                ca_file=b.ca_file,
                cert_file=b.cert_file,
                key_file=b.key_file,
                tls=b.tls,
                keepalive_s=b.keepalive_s,
                clean_session=False,
                subscriptions=subscriptions,
                will_topic=topics.device_presence(config.fleet, dev),
                will_payload=presence_off,
            ),
            logger=log,
            on_connect=self._announce,
            rng=self.rng,
        )

    # state machine -------------------------------------------------------------------------
    def _set(self, new: AgentState) -> None:
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"agent {self.config.device_id}: {self.state.value} -> {new.value}")
        self.state = new
        self.history.append(new)

    def _go_offline(self) -> None:
        if self.state != AgentState.OFFLINE:
            self._set(AgentState.OFFLINE)

    # mqtt ----------------------------------------------------------------------------------
    async def _announce(self) -> None:
        presence = m.make(m.Presence(online=True, profile=self.config.profile)).pack()
        await self.link.publish(
            topics.device_presence(self.config.fleet, self.config.device_id),
            presence,
            retain=True,
            wait_s=1,
        )

    async def _on_mqtt(self, topic: str, payload: bytes) -> None:
        if topic not in self._own_topics:
            log.debug(
                "device %s: ignored a message on %s (not subscribed)", self.config.device_id, topic
            )
            return
        try:
            envelope = unpack(payload, SERVER_ID, DEFAULT_LIMITS)
            self.replay.check(envelope)
            message = m.parse(envelope)
        except ProtocolError as exc:
            log.warning("device %s refused a message on %s: %s", self.config.device_id, topic, exc)
            return
        if isinstance(message, m.JobState):
            self.job_state = message.state
        await self.inbox.put(Inbound(message, envelope.job_id, envelope.round_id, payload))

    async def _send(
        self, message: m.Message, job_id: str | None = None, round_id: int | None = None
    ) -> int:
        data = m.make(message, job_id=job_id, round_id=round_id).pack()
        ok = await self.link.publish(
            topics.device_up(self.config.fleet, self.config.device_id), data
        )
        if not ok:
            raise ConnectionError("not connected")
        return len(data)

    async def _receive(
        self, kinds: tuple[type[m.Message], ...], timeout_s: float
    ) -> Inbound | None:
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            getter = asyncio.ensure_future(self.inbox.get())
            stopper = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            if getter not in done:
                getter.cancel()
                return None
            item = getter.result()
            if isinstance(item.message, kinds):
                return item
            if isinstance(item.message, m.ErrorReport):
                log.warning(
                    "device %s: server says %s: %s",
                    self.config.device_id,
                    item.message.code,
                    item.message.message,
                )
        return None

    # persistence ---------------------------------------------------------------------------
    def _pending_path(self) -> Path:
        return self.state_dir / PENDING_TASK

    def _save_pending(self, envelope: bytes) -> None:
        """Keep the task's envelope as the server sent it, to resume the task after a restart."""
        tmp = self._pending_path().with_suffix(".tmp")
        tmp.write_bytes(envelope)
        os.replace(tmp, self._pending_path())

    def _load_pending(self) -> tuple[m.Task, str | None, int | None] | None:
        path = self._pending_path()
        if not path.exists():
            return None
        try:
            envelope = unpack(path.read_bytes(), SERVER_ID, check_time=False)
            task = m.parse(envelope)
        except ProtocolError as exc:
            log.warning(
                "device %s: dropping unreadable pending task: %s", self.config.device_id, exc
            )
            path.unlink(missing_ok=True)
            return None
        if not isinstance(task, m.Task) or task.deadline < time.time():
            path.unlink(missing_ok=True)
            return None
        return task, envelope.job_id, envelope.round_id

    # main loop -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; reconnects and resumes by itself.

        The frequent waits (for a message, a pause) use the agent's own copy of ``stop``: a
        simulator shares one ``stop`` among thousands of agents, and every wait on an event
        costs O(its waiters) to clean up. The session and its link watch ``stop`` itself.
        """
        self._stop = asyncio.Event()
        relay = asyncio.create_task(self._relay_stop(stop))
        link_task = asyncio.create_task(self.link.run(self._on_mqtt, stop))
        try:
            while not stop.is_set():
                self._go_offline()
                connected = asyncio.create_task(self.link.connected.wait())
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({connected, stopped}, return_when=asyncio.FIRST_COMPLETED)
                connected.cancel()
                stopped.cancel()
                if stop.is_set():
                    break
                self._set(AgentState.CONNECTED)
                try:
                    pending = self._load_pending()
                    if pending is not None:
                        await self._do_task(*pending)
                    await self._session(stop)
                except (ConnectionError, TimeoutError) as exc:
                    log.info("device %s: connection trouble: %s", self.config.device_id, exc)
        finally:
            await link_task  # ends once ``stop`` is set (relayed)
            relay.cancel()

    async def _relay_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()

    async def _session(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and self.link.connected.is_set():
            if not self.hooks.available():
                self._set(AgentState.WAITING)
                await self._pause(1.0)
                continue
            eligibility = self.hooks.eligibility()
            why = ineligibility(eligibility, self.config.eligibility)
            if why is not None:
                self._set(AgentState.WAITING)
                await self._pause(30.0)
                continue
            checkin = m.CheckIn(
                eligibility=eligibility,
                runtime=runtime_name(),
                runtime_version=runtime_version(),
                examples=len(self.data.y_train),
                cached_artifacts=self.fetcher.cached_digests(),
                profile=self.config.profile,
                identity_key=public_key_bytes(self._identity()),
                identity_cert=self._identity_cert_bytes(),
            )
            await self._send(checkin)
            self._set(AgentState.CHECKED_IN)
            reply = await self._receive((m.Task, m.RetryLater), self.checkin_timeout_s)
            if reply is None:
                self._set(AgentState.WAITING)
                continue
            message, job_id, round_id = reply.message, reply.job_id, reply.round_id
            if isinstance(message, m.Task):
                self._save_pending(reply.raw)
                window = await self._do_task(message, job_id, round_id)
                if window is not None:  # the server said when to come back
                    await self._wait_for_retry(window * self.rng.uniform(1.0, 1.1))
            else:
                assert isinstance(message, m.RetryLater)
                self._set(AgentState.WAITING)
                await self._wait_for_retry(message.retry_after_s * self.rng.uniform(1.0, 1.1))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the agent is stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _wait_for_retry(self, seconds: float) -> None:
        """Sleep through a retry window, or wake early on a round-open broadcast (if sampled)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            item = await self._receive((m.RoundOpen, m.JobState), left)
            if item is None:
                return
            message = item.message
            if isinstance(message, m.RoundOpen) and self.rng.random() < message.wake_probability:
                await self.hooks.sleep(self.rng.uniform(0.0, 0.05))
                return

    async def _do_task(
        self, task: m.Task, job_id: str | None, round_id: int | None
    ) -> float | None:
        """Run a task to its end; the check-in window of the server's last ack, if it gave one."""
        self._set(AgentState.TRAINING)
        over = False  # the pending task is kept for a resume unless it ran to its end
        try:
            if self.hooks.drops_out("before-training"):
                return None
            artifact, weights, prior = await self._fetch(task)
            if task.kind == "evaluate":
                return await self._evaluate(artifact, weights, job_id, round_id)
            if task.secagg is not None:
                over = await self._secure_task(task, artifact, weights, job_id, round_id)
                return None
            update = await self._train(task, artifact, weights, prior)
            if (
                update is None
                or self.hooks.drops_out("before-report")
                or time.time() > task.deadline
            ):
                return None
            self._set(AgentState.REPORTING)
            nbytes = await self._send(update, job_id, round_id)
            await self.hooks.after_transfer(nbytes, "up")
            self.uplink_bytes += nbytes
            over = True  # sent: a resume would only send a duplicate
            ack = await self._final_ack()
            if ack is None:
                return None
            if ack.accepted:
                self.rounds_reported += 1
            else:
                log.info("device %s: update refused: %s", self.config.device_id, ack.reason)
            return ack.retry_after_s
        except (ArtifactError, CodecError, DataError, PrivacyError, SecAggError) as exc:
            over = True
            log.warning("device %s: task failed: %s", self.config.device_id, exc)
            await self._send(
                m.ErrorReport(code=type(exc).__name__, message=str(exc)), job_id, round_id
            )
            await self._pause(self.rng.uniform(5.0, 10.0))  # no tight loop on a lasting failure
            return None
        finally:
            if over or self._deliberately_skipped(task):
                self._pending_path().unlink(missing_ok=True)
            if self.state not in (AgentState.WAITING, AgentState.OFFLINE):
                self._set(AgentState.WAITING)

    async def _final_ack(self) -> m.Ack | None:
        """Wait for the ack that ends a task (it carries the next check-in window)."""
        item = await self._receive((m.Ack,), 30.0)
        return item.message if item is not None and isinstance(item.message, m.Ack) else None

    def _deliberately_skipped(self, task: m.Task) -> bool:
        """True when the task will never be resumed: its deadline passed or the device dropped it."""
        return time.time() > task.deadline or (
            not self._stop.is_set() and self.link.connected.is_set()
        )

    async def _fetch(
        self, task: m.Task
    ) -> tuple[Artifact, list[np.ndarray], list[np.ndarray] | None]:
        """The task's model, global weights and (``pred`` training tasks) prior step."""
        before = self.fetcher.bytes_downloaded
        try:
            artifact = await self._artifact(task)
            shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
            delta = prior = None
            if self._predicts(task):
                # The prior of predictive coding is the step the downlink delta carries,
                # decoded exactly as the server decodes it (no delta: neither side predicts).
                assert task.weights_delta is not None
                blob = await self.fetcher.fetch(task.weights_delta, "weights-delta")
                delta = codec.decode_model_delta(blob, shapes)
                prior = delta.step
            weights = await self._weights_from_delta(task, shapes, delta)
            if weights is None:
                weights_blob = await self.fetcher.fetch(task.weights, "weights")
                weights = unpack_weights(weights_blob, shapes)
        finally:
            self.fetcher.release()  # the task's downloads are done
        await self.hooks.after_transfer(self.fetcher.bytes_downloaded - before, "down")
        return artifact, weights, prior

    @staticmethod
    def _predicts(task: m.Task) -> bool:
        """Whether a task trains with predictive coding from a downlink delta it names."""
        return (
            task.kind == "train"
            and task.weights_delta is not None
            and codec.parse_spec(task.codec).predict is not None
        )

    async def _artifact(self, task: m.Task) -> Artifact:
        """The task's model: the one in memory if this device holds its verified files, else
        fetched (from the cache or the server) and checked against the signed digests."""
        digests = (task.model.sha256, task.manifest.sha256)
        known = self.trainers.known(digests)
        if (
            known is not None
            and self.fetcher.holds(task.model)
            and self.fetcher.holds(task.manifest)
        ):
            return known
        model = await self.fetcher.fetch(task.model, "model")
        manifest = await self.fetcher.fetch(task.manifest, "manifest")
        return self.trainers.artifact(model, manifest, digests)

    async def _weights_from_delta(
        self, task: m.Task, shapes: list[tuple[int, ...]], delta: codec.ModelDelta | None
    ) -> list[np.ndarray] | None:
        """Rebuild the new global weights from the cached previous ones plus the signed delta
        (``delta`` when the task already fetched and decoded it, else fetched here).

        The result must hash to the signed weights digest of the task; otherwise (or when the
        previous weights are not cached) the caller downloads the full weights.
        """
        if task.weights_delta is None or task.delta_base is None:
            return None
        base = self.fetcher.cached(task.delta_base)
        if base is None:
            return None
        try:
            old = unpack_weights(base, shapes)
            if delta is None:
                blob = await self.fetcher.fetch(task.weights_delta, "weights-delta")
                delta = codec.decode_model_delta(blob, shapes)
            new = delta.apply(old)
        except (ArtifactError, CodecError) as exc:
            log.info(
                "device %s: weights delta unusable (%s); fetching full weights",
                self.config.device_id,
                exc,
            )
            return None
        blob = pack_weights(new)
        if not self.fetcher.store_verified(task.weights, "weights", blob):
            return None
        return new

    async def _local_update(
        self, task: m.Task, artifact: Artifact, weights: list[np.ndarray]
    ) -> tuple[list[np.ndarray], TrainResult, int]:
        """Train on the local data from ``weights``; (delta, metrics, the seed used)."""
        seed = self.train_rng.getrandbits(31)
        async with self.trainers.lock:
            trainer = self.trainers.get(artifact)

            def work() -> tuple[list[np.ndarray], TrainResult]:
                trainer.set_weights(weights)
                result = trainer.fit(
                    self.data.x_train,
                    self.data.y_train,
                    epochs=task.plan.epochs,
                    lr=task.plan.lr,
                    seed=seed,
                    max_steps=task.plan.max_steps,
                    shuffle=task.plan.shuffle,
                )
                return trainer.get_weights(), result

            new_weights, result = await self.hooks.compute(work)
        await self.hooks.after_compute(result.wall_time_s)
        return [nw - w for nw, w in zip(new_weights, weights, strict=True)], result, seed

    async def _train(
        self,
        task: m.Task,
        artifact: Artifact,
        weights: list[np.ndarray],
        prior: list[np.ndarray] | None,
    ) -> m.Update | None:
        spec = codec.parse_spec(task.codec)
        shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        encoder = codec.UpdateEncoder(spec, shapes, self.state_dir / "residual.npz")
        start = codec.predicted_weights(spec, weights, prior)
        delta, result, seed = await self._local_update(task, artifact, start)
        if self.hooks.drops_out("after-training"):
            return None
        within_clip = None
        if task.dp is not None:  # clip on the device: DP bounds each device's contribution
            clipped = clip_update(delta, task.dp.clip)
            delta, within_clip = list(clipped.arrays), bool(clipped.within_clip)
        encoded = encoder.encode(delta, round_seed=task.round_seed, rng_seed=seed)
        metrics = m.TrainMetrics(
            loss=float(result.loss),
            accuracy=float(result.accuracy),
            examples=int(result.examples),
            train_time_s=float(result.wall_time_s),
        )
        return m.Update(
            payload=encoded.payload,
            base_weights=m.base_digest(task.weights.sha256),
            metrics=metrics,
            within_clip=within_clip,
        )

    async def _secure_task(
        self,
        task: m.Task,
        artifact: Artifact,
        weights: list[np.ndarray],
        job_id: str | None,
        round_id: int | None,
    ) -> bool:
        """Train, then run the client half of SecAgg+; True once the task is over."""
        settings = task.secagg
        assert settings is not None
        config, max_weight = settings.config, settings.max_weight
        stage_timeout, secagg_round = settings.stage_timeout_s, settings.round_id
        encode = self._secure_encoder(task, artifact, settings)
        delta, result, seed = await self._local_update(task, artifact, weights)
        weight = min(max(int(result.examples), 1), max_weight)
        vector = encode(delta, weight / max_weight, seed)
        x = np.concatenate([vector, np.array([weight], np.uint32)])
        client = SecAggClient(
            self.config.device_id,
            self._identity(),
            secagg_round,
            config,
            self._enrolment_key(),
            self._identity_certificate(),
        )
        metrics = m.TrainMetrics(
            loss=float(result.loss),
            accuracy=float(result.accuracy),
            examples=int(result.examples),
            train_time_s=float(result.wall_time_s),
        )
        if self.hooks.drops_out("secagg-advertise"):
            return True
        self._set(AgentState.REPORTING)
        await self._send(
            m.SecAggStage(
                stage="advertise",
                data={"msg": client.advertise().to_wire(), "metrics": vars(metrics)},
            ),
            job_id,
            round_id,
        )
        steps = {
            "roster": ("share", client.share_keys),
            "masked_request": ("masked", lambda req: client.masked_input(req, x)),
            "unmask_request": ("unmask", client.unmask),
        }
        wait_s = max(task.deadline - time.time(), 0.0) + stage_timeout
        while True:
            item = await self._receive((m.SecAggStage, m.Ack), wait_s)
            if item is None:
                return True  # the server moved on without us (or aborted the round)
            if isinstance(item.message, m.Ack):
                if not item.message.accepted:
                    log.info(
                        "device %s: secure aggregation message refused: %s",
                        self.config.device_id,
                        item.message.reason,
                    )
                    return True
                continue
            request = item.message
            assert isinstance(request, m.SecAggStage)
            if request.stage not in steps:
                raise SecAggError(f"unexpected secure-aggregation stage {request.stage!r}")
            stage, respond = steps[request.stage]
            if self.hooks.drops_out(f"secagg-{stage}"):
                return True
            reply = respond(decode_message(request.data))  # type: ignore[operator]
            await self._send(
                m.SecAggStage(stage=stage, data={"msg": reply.to_wire()}), job_id, round_id
            )
            wait_s = 3 * stage_timeout
            if stage == "unmask":
                self.rounds_reported += 1
                return True

    def _secure_encoder(
        self, task: m.Task, artifact: Artifact, settings: m.SecAggTask
    ) -> Callable[[list[np.ndarray], float, int], np.ndarray]:
        """How this task turns (delta, weight fraction, rounding seed) into its ring vector.

        Distributed DP: clip, rotate, round and add integer noise drawn from OS randomness
        (never from a seed the server could know); every device weighs 1. Otherwise the
        ring codec of the task's spec, with its error-feedback residual in the state dir.
        """
        shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        if task.dp is not None and task.dp.params is not None:
            params = task.dp.params
            if settings.config.dimension != params.padded_dim + 1:
                raise PrivacyError(
                    f"secure-aggregation dimension {settings.config.dimension} does not fit the "
                    f"distributed DP vector of {params.padded_dim} (+1)"
                )
            return lambda delta, _fraction, _seed: encode_distributed(
                delta, params, task.round_seed
            )
        ring = codec.RingCodec(
            codec.parse_spec(task.codec),
            shapes,
            settings.clip,
            settings.bits,
            settings.n_max,
            residual_path=self.state_dir / "residual-secure.npz",
        )
        return lambda delta, fraction, seed: (
            ring.encode(
                [d * np.float32(fraction) for d in delta], round_seed=task.round_seed, rng_seed=seed
            ).vector
        )

    def _identity(self) -> Any:
        """The device's Ed25519 identity key, created in the state dir on first start."""
        if self._identity_key is None:
            path = self.config.identity_key_file or self.state_dir / "identity.key"
            self._identity_key = load_or_create_identity(path)
        return self._identity_key

    def _identity_cert_bytes(self) -> bytes | None:
        path = self.config.identity_cert_file
        return path.read_bytes() if path is not None and path.exists() else None

    def _enrolment_key(self) -> Any:
        path = self.config.enrolment_key_file
        return load_enrolment_public_key(path) if path is not None else None

    def _identity_certificate(self) -> IdentityCertificate | None:
        path = self.config.identity_cert_file
        if path is None:
            return None
        try:
            return IdentityCertificate.from_wire(msgpack.unpackb(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise SecAggError(f"cannot read the identity certificate {path}: {exc}") from exc

    async def _evaluate(
        self,
        artifact: Artifact,
        weights: list[np.ndarray],
        job_id: str | None,
        round_id: int | None,
    ) -> float | None:
        """Evaluate on the local test split and report; the next check-in window, if given."""
        x = self.data.x_test if self.data.x_test is not None else self.data.x_train
        y = self.data.y_test if self.data.y_test is not None else self.data.y_train
        async with self.trainers.lock:
            trainer = self.trainers.get(artifact)

            def work() -> EvalResult:
                trainer.set_weights(weights)
                return trainer.evaluate(x, y)

            result = await self.hooks.compute(work)
        self._set(AgentState.REPORTING)
        await self._send(
            m.EvalResult(
                loss=float(result.loss),
                accuracy=float(result.accuracy),
                examples=int(result.examples),
            ),
            job_id,
            round_id,
        )
        ack = await self._final_ack()
        return None if ack is None else ack.retry_after_s
