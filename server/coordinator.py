"""Runs one federated job: rounds over MQTT, streaming aggregation, persistence and resume."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np

from fedge.edge_client import codec
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.errors import CodecError, FedgeError, ProtocolError, SecAggError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, Limits, ReplayGuard, unpack
from fedge.edge_client.signing import sign_blob
from fedge.edge_client.trainer import LocalTrainer
from fedge.edge_client.weights import pack_weights, unpack_weights
from fedge.server.aggregator import StreamingMean
from fedge.server.blobs import BlobStore
from fedge.server.dp_controller import CentralDP, DistributedDP, privacy_for_job
from fedge.server.job import JobConfig
from fedge.server.optimizers import ServerOptimizer
from fedge.server.rounds import ParticipantReport, RoundRun, RoundState
from fedge.server.secure_round import SecureRound, secure_settings
from fedge.server.selection import SelectionPool, ineligibility, round_rng, round_seed
from fedge.server.store import Store

log = logging.getLogger("fedge.server")


class Publish(Protocol):
    """Publish ``data`` on ``topic`` at ``qos``; False when it could not be sent."""

    def __call__(self, topic: str, data: bytes, qos: int = 1) -> Awaitable[bool]: ...


@dataclass(frozen=True)
class BlobSet:
    """The signed, content-addressed blobs devices download for a round."""

    model: m.BlobRef
    manifest: m.BlobRef
    weights: m.BlobRef


@dataclass(frozen=True)
class WeightsDelta:
    """The signed downlink delta from the previous global weights to the current ones."""

    base_sha: str  # the weights it applies to
    ref: m.BlobRef
    step: list[np.ndarray] | None  # the decoded step: the prior of `pred` specs, else None


class Coordinator:
    """The server side of the protocol for one job."""

    def __init__(
        self,
        job: JobConfig,
        artifact: Artifact,
        store: Store,
        blobs: BlobStore,
        signing_key: Any,
        public_url: str,
        publish: Publish,
        limits: Limits = DEFAULT_LIMITS,
        central_data: tuple[np.ndarray, np.ndarray] | None = None,
        served_bytes: Callable[[], int] = lambda: 0,
        expect_devices: int = 0,
        enrolment_key: Any = None,
    ):
        self.job = job
        self.artifact = artifact
        self.store = store
        self.blobs = blobs
        self.signing_key = signing_key
        self.public_url = public_url.rstrip("/")
        self.publish = publish
        self.limits = limits
        self.central_data = central_data
        self.served_bytes = served_bytes
        self.expect_devices = expect_devices
        self.codec_spec = codec.parse_spec(job.codec)
        self.shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        self.pool = SelectionPool(job.selection)
        self.replay = ReplayGuard(limits.max_clock_skew_s)
        self.optimizer = ServerOptimizer(job.optimizer)
        self.secure = secure_settings(job.secagg)
        self.dp = privacy_for_job(job, artifact.manifest.param_count)
        self.enrolment_key = enrolment_key
        self.evaluator = LocalTrainer(artifact)
        self.current: RoundRun | None = None
        self.online: set[str] = set()
        self._fleet_wait_until = 0.0  # before the first round: when waiting for the fleet ends
        self._outbox: set[asyncio.Task[int]] = set()
        self.weights: list[np.ndarray] = []
        self.weights_sha = ""
        self.downlink_spec = codec.parse_spec(job.downlink) if job.downlink else None
        self.weights_delta: WeightsDelta | None = None
        self.finished = asyncio.Event()
        self.paused = asyncio.Event()
        self.paused.set()  # set = running
        self.status = "running"
        self._rng = round_rng(job.seed, job.name, 0, 0, "retry-windows")
        self._model_refs = self._put_artifact()
        self._blob_cache: BlobSet | None = None
        self._blobs_for = ""

    # blobs ---------------------------------------------------------------------------------
    def _ref(self, kind: str, data: bytes) -> m.BlobRef:
        digest = self.blobs.put(data)
        return m.BlobRef(
            sha256=digest,
            url=f"{self.public_url}/v1/blobs/{digest}",
            signature=sign_blob(self.signing_key, kind, digest),
            size=len(data),
        )

    def _weights_delta(
        self, base_sha: str, delta_blob: bytes, decoded: codec.ModelDelta
    ) -> WeightsDelta:
        """Stage a signed downlink delta and its decoded step (the prior of ``pred`` specs)."""
        step = decoded.step if self.codec_spec.predict is not None else None
        return WeightsDelta(base_sha, self._ref("weights-delta", delta_blob), step)

    def _put_artifact(self) -> tuple[m.BlobRef, m.BlobRef]:
        return (
            self._ref("model", self.artifact.model_bytes),
            self._ref("manifest", self.artifact.manifest.to_json()),
        )

    def _blob_set(self) -> BlobSet:
        """The round's blobs; the weights are read, hashed and signed once per model version."""
        if self._blobs_for != self.weights_sha:
            weights_ref = self._ref("weights", self.blobs.get(self.weights_sha))
            self._blob_cache = BlobSet(self._model_refs[0], self._model_refs[1], weights_ref)
            self._blobs_for = self.weights_sha
        assert self._blob_cache is not None
        return self._blob_cache

    # resume --------------------------------------------------------------------------------
    def restore_or_init(self) -> int:
        """Load the last committed checkpoint (or the artifact's initial weights); return its round."""
        row = self.store.job(self.job.name)
        if row is None:
            self.store.create_job(self.job.name, self.job.to_dict())
            row = self.store.job(self.job.name)
            assert row is not None
        failed = self.store.fail_unfinished_rounds(self.job.name, "server restarted mid-round")
        if failed:
            log.warning(
                "job %s: %d unfinished round(s) marked failed after a restart",
                self.job.name,
                failed,
            )
        if row["weights_sha"]:
            self.weights = unpack_weights(self.blobs.get(row["weights_sha"]), self.shapes)
            self.weights_sha = row["weights_sha"]
            if row["optimizer_sha"]:
                keys, arrays = _unpack_state(self.blobs.get(row["optimizer_sha"]))
                self.optimizer.load_state_arrays(keys, arrays)
            log.info(
                "job %s: resuming after committed round %d", self.job.name, row["committed_round"]
            )
            if self.dp is not None and self.dp.clipper is not None:
                clips = [
                    r["dp_clip"]
                    for r in self.store.rounds(self.job.name, "train")
                    if r["state"] == "committed" and r["dp_clip"] is not None
                ]
                if clips:
                    self.dp.clipper.clip = clips[-1]
            self._restore_weights_delta(row)
        else:
            self.weights = self.evaluator.get_weights()
            self.weights_sha = self.blobs.put(pack_weights(self.weights))
        if row["status"] in ("finished", "stopped", "failed"):
            self.status = row["status"]
            self.finished.set()
        return int(row["committed_round"])

    def _restore_weights_delta(self, row: dict[str, Any]) -> None:
        """Offer the last committed round's downlink delta again (and its ``pred`` prior)."""
        if self.downlink_spec is None or not row["delta_sha"] or not row["delta_base_sha"]:
            return
        try:
            blob = self.blobs.get(row["delta_sha"])
        except FileNotFoundError:
            log.warning(
                "job %s: downlink delta %s is missing from the blob store; devices "
                "fetch full weights for one round",
                self.job.name,
                row["delta_sha"][:12],
            )
            return
        self.weights_delta = self._weights_delta(
            row["delta_base_sha"], blob, codec.decode_model_delta(blob, self.shapes)
        )

    # inbound -------------------------------------------------------------------------------
    async def on_message(self, topic: str, payload: bytes) -> None:
        """Dispatch one MQTT message from a device; refuse and log anything invalid."""
        device_id: str | None = None
        try:
            fleet, device_id, kind = topics.parse_device_topic(topic)
            if fleet != self.job.fleet:
                raise ProtocolError(f"message for fleet {fleet!r}")
            if kind == "presence":
                self._on_presence(device_id, payload)
                return
            if kind != "up":
                raise ProtocolError(f"server does not read {kind!r} topics")
            envelope = unpack(payload, device_id, self.limits)
            self.replay.check(envelope)
            message = m.parse(envelope, self.limits)
            await self._dispatch(
                device_id, envelope.job_id, envelope.round_id, message, len(payload)
            )
        except (ProtocolError, CodecError) as exc:
            self._reject(device_id, topic, str(exc))
            if device_id is not None and isinstance(exc, ProtocolError | CodecError):
                self._post(device_id, m.ErrorReport(code=type(exc).__name__, message=str(exc)))

    def _reject(self, device_id: str | None, topic: str, reason: str) -> None:
        log.warning("refused message from %s on %s: %s", device_id or "?", topic, reason)
        self.store.record_rejection(device_id, topic, reason)
        if self.current is not None:
            self.current.refused += 1

    def _on_presence(self, device_id: str, payload: bytes) -> None:
        if not payload:
            return
        envelope = unpack(payload, device_id, self.limits, check_time=False)
        presence = m.parse(envelope, self.limits)
        if not isinstance(presence, m.Presence):
            raise ProtocolError("presence topic carries a non-presence message")
        self.store.upsert_device(
            device_id, self.job.fleet, online=presence.online, profile=presence.profile
        )
        if presence.online:
            self.online.add(device_id)
        else:
            self.online.discard(device_id)
            self.pool.remove(device_id)

    async def _dispatch(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        message: m.Message,
        nbytes: int,
    ) -> None:
        if isinstance(message, m.CheckIn):
            await self._on_checkin(device_id, message)
        elif isinstance(message, m.Update):
            await self._on_update(device_id, job_id, round_id, message, nbytes)
        elif isinstance(message, m.EvalResult):
            await self._on_eval_result(device_id, job_id, round_id, message, nbytes)
        elif isinstance(message, m.SecAggStage):
            await self._on_secagg(device_id, job_id, round_id, message, nbytes)
        elif isinstance(message, m.ErrorReport):
            log.warning("device %s reports %s: %s", device_id, message.code, message.message)
            rnd = self.current
            if rnd is not None and round_id == rnd.number and device_id in rnd.selected:
                rnd.failed.add(device_id)  # its task failed: do not hand it the same task again
        else:
            raise ProtocolError(f"devices may not send {message.TYPE!r}")

    async def _on_checkin(self, device_id: str, checkin: m.CheckIn) -> None:
        self.store.upsert_device(
            device_id,
            self.job.fleet,
            online=True,
            profile=checkin.profile,
            runtime=f"{checkin.runtime} {checkin.runtime_version}",
            eligibility=vars(checkin.eligibility),
            identity_key=checkin.identity_key,
        )
        rnd = self.current
        if self.finished.is_set() or not self.paused.is_set():
            self._retry(device_id, f"job {self.status}", 60.0)
            return
        if (
            rnd is not None
            and device_id in rnd.selected
            and device_id not in rnd.reports
            and device_id not in rnd.failed
            and rnd.state in (RoundState.CONFIGURING, RoundState.COLLECTING)
        ):
            await self._send_task(device_id, rnd)  # the device restarted: send its task again
            return
        why = ineligibility(checkin, self.job.selection)
        if why is not None:
            self._retry(device_id, f"not eligible: {why}", self.job.selection.retry_window_s)
            return
        if rnd is not None and rnd.state == RoundState.SELECTING:
            self.pool.add(device_id, checkin)
            return
        self._retry(device_id, "round in progress", self._eta())

    def _eta(self) -> float:
        """Seconds until the next selection is likely to want devices.

        Before the first round that is the end of the wait for the fleet (the round-open wakes
        devices earlier if the fleet is complete sooner): a device told to come
        back in a second would keep the whole connecting fleet checking in every second.
        """
        rnd = self.current
        if rnd is None:
            return max(self._fleet_wait_until - time.time(), 1.0)
        if rnd.state == RoundState.SELECTING:
            return 1.0
        return max(rnd.deadline - time.time(), 1.0)

    def _window(self, eta_s: float) -> float:
        """A device's next check-in window (pace steering)."""
        return self.pool.retry_window(
            self._rng, eta_s, self.job.selection.selected_per_round, online=len(self.online)
        )

    def _retry(self, device_id: str, reason: str, eta_s: float) -> None:
        self._post(device_id, m.RetryLater(reason=reason, retry_after_s=self._window(eta_s)))

    def _end_task(self, device_id: str, refusal: str | None = None) -> None:
        """Ack a device's last message of a task with its next check-in window."""
        ack = m.Ack(
            accepted=refusal is None, reason=refusal or "", retry_after_s=self._window(self._eta())
        )
        self._post(device_id, ack)

    async def _on_update(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        update: m.Update,
        nbytes: int,
    ) -> None:
        rnd = self.current
        refusal = self._late_or_foreign(device_id, job_id, round_id, "train")
        if refusal is None and update.base_weights != m.base_digest(self.weights_sha):
            refusal = "update was trained on other weights than this round's"
        if refusal is None and rnd is not None and rnd.secure is not None:
            refusal = "this round uses secure aggregation: plain updates are refused"
        if refusal is not None or rnd is None:
            self._reject(device_id, "update", refusal or "no round")
            self._end_task(device_id, refusal or "no round")
            return
        delta = codec.decode_update(
            update.payload,
            self.codec_spec,
            self.shapes,
            round_seed=rnd.round_seed,
            prior=self.weights_delta.step if self.weights_delta else None,
        )
        if isinstance(self.dp, CentralDP):
            delta = self.dp.bound(delta)
            rnd.within_clip += int(bool(update.within_clip))
        assert rnd.aggregator is not None
        rnd.aggregator.add(delta, update.metrics.examples)
        report = ParticipantReport(
            update.metrics.examples,
            update.metrics.loss,
            update.metrics.accuracy,
            update.metrics.train_time_s,
            nbytes,
        )
        self._record_report(rnd, device_id, report)
        self._end_task(device_id)

    def _record_report(self, rnd: RoundRun, device_id: str, report: ParticipantReport) -> None:
        """Count a device's report in the round and persist it as its participation."""
        rnd.record(device_id, report)
        self.store.set_participant(
            rnd.rid,
            device_id,
            "reported",
            examples=report.examples,
            loss=report.loss,
            accuracy=report.accuracy,
            train_time_s=report.train_time_s,
            uplink_bytes=report.uplink_bytes,
        )

    async def _on_secagg(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        stage: m.SecAggStage,
        nbytes: int,
    ) -> None:
        rnd = self.current
        refusal = self._late_or_foreign(device_id, job_id, round_id, "train")
        if refusal is None and (rnd is None or rnd.secure is None):
            refusal = "this round does not use secure aggregation"
        msg = stage.data.get("msg")
        if refusal is None and not isinstance(msg, dict):
            refusal = "secagg message without a 'msg' map"
        if refusal is None and rnd is not None and rnd.secure is not None:
            try:
                rnd.secure.receive(device_id, msg)  # type: ignore[arg-type]
            except SecAggError as exc:
                refusal = str(exc)
        if refusal is not None or rnd is None:
            self._reject(device_id, f"secagg/{stage.stage}", refusal or "no round")
            self._post(device_id, m.Ack(accepted=False, reason=refusal or "no round"))
            return
        rnd.uplink_bytes += nbytes
        metrics = stage.data.get("metrics")
        if stage.stage == "advertise" and isinstance(metrics, dict):
            try:
                rnd.secure_metrics[device_id] = m.TrainMetrics.from_body(metrics)
            except ProtocolError as exc:
                self._reject(device_id, "secagg/advertise", f"metrics: {exc}")

    async def _send_stage(self, device_id: str, stage: str, data: dict[str, Any]) -> None:
        rnd = self.current
        nbytes = await self._send(device_id, m.SecAggStage(stage=stage, data=data))
        if rnd is not None:
            rnd.downlink_bytes += nbytes

    async def _on_eval_result(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        result: m.EvalResult,
        nbytes: int,
    ) -> None:
        rnd = self.current
        refusal = self._late_or_foreign(device_id, job_id, round_id, "evaluate")
        if refusal is not None or rnd is None:
            self._reject(device_id, "eval_result", refusal or "no round")
            self._end_task(device_id, refusal or "no round")
            return
        report = ParticipantReport(result.examples, result.loss, result.accuracy, 0.0, nbytes)
        self._record_report(rnd, device_id, report)
        self._end_task(device_id)

    def _late_or_foreign(
        self, device_id: str, job_id: str | None, round_id: int | None, kind: str
    ) -> str | None:
        rnd = self.current
        if job_id != self.job.name:
            return f"unknown job {job_id!r}"
        if rnd is None or round_id != rnd.number or rnd.kind != kind:
            return f"stale message for round {round_id}; current round is {rnd.number if rnd else None}"
        if device_id not in rnd.selected:
            return f"device was not selected for round {rnd.number}"
        if device_id in rnd.reports:
            return "duplicate report"
        if rnd.secure is not None and kind == "train":
            return None  # the secure-aggregation state machine orders the stages itself
        if not rnd.open_for_reports:
            return f"round {rnd.number} is closed ({rnd.state.value}); late report refused"
        return None

    # outbound ------------------------------------------------------------------------------
    def _post(self, device_id: str, message: m.Message) -> None:
        """Send without waiting for the broker's acknowledgement (acks, refusals, retry windows).

        The inbound handler runs one message at a time: awaiting every PUBACK would cap the
        ingest rate at one broker round trip per message. QoS 0: such a reply is only useful
        while the device is connected (a device that misses one checks in again), and the
        client keeps no per-message state for it.
        """
        task = asyncio.create_task(self._send(device_id, message, qos=0))
        self._outbox.add(task)
        task.add_done_callback(self._posted)

    def _posted(self, task: asyncio.Task[int]) -> None:
        self._outbox.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reply to a device was not published: %s", task.exception())

    async def drain_outbox(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for replies still being published, e.g. before the job ends."""
        if self._outbox:
            await asyncio.wait(set(self._outbox), timeout=timeout_s)

    async def _send(self, device_id: str, message: m.Message, qos: int = 1) -> int:
        rnd = self.current
        envelope = m.make(message, job_id=self.job.name, round_id=rnd.number if rnd else None)
        data = envelope.pack()
        await self.publish(topics.device_down(self.job.fleet, device_id), data, qos)
        return len(data)

    async def _send_task(self, device_id: str, rnd: RoundRun) -> None:
        blobs = self._blob_set()
        plan = m.TrainingPlan(
            epochs=self.job.training.local_epochs,
            lr=self.job.training.lr_for_round(rnd.number),
            max_steps=self.job.training.max_steps,
            shuffle=self.job.training.shuffle,
        )
        delta = self.weights_delta
        task = m.Task(
            kind=rnd.kind,
            model=blobs.model,
            manifest=blobs.manifest,
            weights=blobs.weights,
            weights_delta=delta.ref if delta else None,
            delta_base=delta.base_sha if delta else None,
            plan=plan,
            codec=str(self.codec_spec),
            deadline=rnd.deadline,
            round_seed=rnd.round_seed,
            dp=self.dp.task_settings() if self.dp and rnd.kind == "train" else None,
            secagg=rnd.secure.task_settings() if rnd.secure is not None else None,
        )
        rnd.downlink_bytes += await self._send(device_id, task)

    # the job -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run rounds until the job has committed all of them (or failed, or was stopped)."""
        try:
            await self._run_rounds()
        finally:
            await self.drain_outbox()

    async def _run_rounds(self) -> None:
        committed = self.restore_or_init()
        await self._wait_for_fleet()
        while not self.finished.is_set() and committed < self.job.rounds:
            await self.paused.wait()
            if self.finished.is_set():
                break
            if self.dp is not None:
                self.dp.ensure_accountant(self._population(), rounds_done=committed)
                exhausted = self.dp.budget_exhausted()
                if exhausted:
                    self._finish("finished", exhausted)
                    return
            number = committed + 1
            ok = await self._run_round(number, "train")
            if ok:
                committed = number
                ev = self.job.evaluation
                if ev.federated_every and number % ev.federated_every == 0:
                    await self._run_round(number, "evaluate")
            elif (
                self.store.attempts(self.job.name, "train", number)
                >= self.job.selection.max_attempts
            ):
                self._finish(
                    "failed", f"round {number} failed {self.job.selection.max_attempts} times"
                )
                return
        if not self.finished.is_set():
            self._finish("finished", None)

    def _population(self) -> int:
        """Devices of the fleet the server knows: the population DP sampling draws from."""
        rows = self.store.query(
            "SELECT COUNT(*) AS n FROM devices WHERE fleet=?", (self.job.fleet,)
        )
        return max(int(rows[0]["n"]), len(self.online))

    async def _wait_for_fleet(self) -> None:
        """Before the first round, give an expected fleet (e.g. a simulation) time to come online.

        Up to a minute plus 10 ms per expected device (10,000 sessions take ~30-50 s to open).
        """
        self._fleet_wait_until = time.time() + 60.0 + 0.01 * self.expect_devices
        while len(self.online) < self.expect_devices and time.time() < self._fleet_wait_until:
            await asyncio.sleep(0.05)
        self._fleet_wait_until = 0.0

    def _finish(self, status: str, reason: str | None) -> None:
        self.status = status
        self.store.set_job_status(self.job.name, status, reason)
        self.finished.set()
        log.info("job %s %s%s", self.job.name, status, f": {reason}" if reason else "")

    def stop(self, reason: str = "stopped by operator") -> None:
        """Stop the job after the current step."""
        self._finish("stopped", reason)
        self.paused.set()  # a paused job must wake up to see that it stopped
        if self.current is not None:
            self.current.enough.set()

    async def _run_round(self, number: int, kind: str) -> bool:
        sel = self.job.selection
        attempt = self.store.attempts(self.job.name, kind, number) + 1
        rid = self.store.start_round(
            self.job.name, number, attempt, kind, RoundState.SELECTING.value
        )
        rnd = RoundRun(
            rid=rid,
            job_id=self.job.name,
            number=number,
            attempt=attempt,
            kind=kind,
            round_seed=round_seed(self.job.seed, self.job.name, number, attempt),
        )
        want = sel.selected_per_round if kind == "train" else self.job.evaluation.federated_devices
        rnd.target = (
            sel.target_reports if kind == "train" else max(1, int(want / sel.over_selection))
        )
        minimum = sel.min_reports if kind == "train" else 1
        if kind == "train":  # DP-FedAvg weighs every device the same (bounded sensitivity)
            cap = 1 if self.dp is not None else self.job.training.max_example_weight
            rnd.aggregator = StreamingMean(self.shapes, cap)
        self.current = rnd
        served_before = self.served_bytes()
        log.info("round %d (%s, attempt %d): selecting %d devices", number, kind, attempt, want)

        # SELECTING: wake a sample of waiting devices, then wait for enough eligible check-ins.
        # QoS 0: the round-open goes to many devices, and a PUBACK from every one would cost
        # more than the message; a device that misses it checks in after its retry window.
        t0 = time.time()
        wake = self.pool.wake_plan(self._rng, want, len(self.online), grouped=self.dp is None)
        round_open = m.make(
            m.RoundOpen(round=number, wake_probability=wake.probability),
            job_id=self.job.name,
            round_id=number,
        ).pack()
        for topic in wake.topics(self.job.fleet):
            await self.publish(topic, round_open, 0)
        while not self.finished.is_set() and not self.pool.should_close(
            want, minimum, len(self.online), time.time() - t0, woke_everyone=wake.everyone
        ):
            await asyncio.sleep(0.05)
        if self.finished.is_set():
            self._fail(rnd, "job stopped")
            return False
        self.pool.observe_response(wake.woken, want)
        # DP jobs sample with OS randomness: a predictable seed would void privacy amplification.
        rng = (
            secrets.SystemRandom()
            if self.dp is not None
            else round_rng(self.job.seed, self.job.name, number, attempt, f"select-{kind}")
        )
        chosen, rest = self.pool.select(rng, want)
        rnd.selected = set(chosen)
        rnd.target = min(rnd.target, len(chosen))  # fewer came: do not wait for the deadline
        rnd.deadline = time.time() + sel.round_deadline_s
        if kind == "train" and self.secure is not None:
            rnd.secure = SecureRound(
                fleet=self.job.fleet,
                round_id=f"{self.job.name}.{number}.{attempt}",
                round_seed=rnd.round_seed,
                selected=chosen,
                shapes=self.shapes,
                codec_spec=self.codec_spec,
                settings=self.secure,
                max_weight=self.job.training.max_example_weight,
                enrolment_key=self.enrolment_key,
                dp=self.dp if isinstance(self.dp, DistributedDP) else None,
            )
        rnd.advance(RoundState.CONFIGURING)
        self.store.set_participants(rid, chosen)
        self.store.transition(rid, RoundState.CONFIGURING.value, selected=len(chosen))
        for device_id in rest:
            self._retry(device_id, "not selected this round", self._eta())

        # CONFIGURING: send every selected device its task.
        rnd.advance(RoundState.COLLECTING)
        self.store.transition(rid, RoundState.COLLECTING.value)
        await asyncio.gather(*(self._send_task(d, rnd) for d in chosen))

        # COLLECTING: until the target reported or the deadline passed (secure: the four stages).
        secure_mean: list[np.ndarray] | None = None
        if rnd.secure is not None:
            try:
                secure_mean = await self._collect_secure(rnd)
            except SecAggError as exc:
                rnd.reports.clear()
                log.warning("round %d: secure aggregation aborted: %s", number, exc)
        else:
            try:
                await asyncio.wait_for(
                    rnd.enough.wait(), timeout=max(rnd.deadline - time.time(), 0)
                )
            except TimeoutError:
                pass
        rnd.downlink_bytes += self.served_bytes() - served_before
        for device_id in rnd.dropped():
            self.store.set_participant(rid, device_id, "dropped", reason="no report by deadline")
        counts = dict(
            reported=len(rnd.reports),
            dropped=len(rnd.dropped()),
            refused=rnd.refused,
            uplink_bytes=rnd.uplink_bytes,
            downlink_bytes=rnd.downlink_bytes,
        )
        if self.finished.is_set():
            self._fail(rnd, "job stopped", **counts)
            return False
        if len(rnd.reports) < minimum:
            self._fail(
                rnd,
                f"only {len(rnd.reports)} of the minimum {minimum} reported by the deadline",
                **counts,
            )
            return False

        # AGGREGATING
        rnd.advance(RoundState.AGGREGATING)
        self.store.transition(rid, RoundState.AGGREGATING.value, reason=None, **counts)
        if kind == "evaluate":
            rnd.advance(RoundState.COMMITTED)
            self.store.transition(
                rid,
                RoundState.COMMITTED.value,
                fed_eval_loss=rnd.weighted_metric("loss"),
                fed_eval_accuracy=rnd.weighted_metric("accuracy"),
            )
            return True
        try:
            return self._aggregate_and_commit(rnd, counts, secure_mean)
        except FedgeError as exc:  # a bad aggregate fails the round, never the server
            log.exception("round %d: aggregation failed", number)
            self._fail(rnd, f"aggregation failed: {exc}", **counts)
            return False

    async def _collect_secure(self, rnd: RoundRun) -> list[np.ndarray]:
        """Run the SecAgg+ stages; the weighted mean delta of the survivors (exact ring sum)."""
        assert rnd.secure is not None
        survivors = await rnd.secure.run(self._send_stage, rnd.deadline, rnd.target)
        mean, total_weight = rnd.secure.decode_mean()
        if total_weight <= 0:
            raise SecAggError("the secure sum carries no weight")
        for device_id in sorted(survivors):
            metrics = rnd.secure_metrics.get(device_id)
            rnd.reports[device_id] = ParticipantReport(
                metrics.examples if metrics else 0,
                metrics.loss if metrics else 0.0,
                metrics.accuracy if metrics else 0.0,
                metrics.train_time_s if metrics else 0.0,
                0,
            )
            self.store.set_participant(
                rnd.rid,
                device_id,
                "reported",
                examples=metrics.examples if metrics else None,
                loss=metrics.loss if metrics else None,
                accuracy=metrics.accuracy if metrics else None,
            )
        return mean

    def _aggregate_and_commit(
        self, rnd: RoundRun, counts: dict[str, int], secure_mean: list[np.ndarray] | None = None
    ) -> bool:
        t_agg = time.time()
        if secure_mean is not None:
            mean_delta = secure_mean
        elif isinstance(self.dp, CentralDP):
            assert rnd.aggregator is not None
            mean_delta = self.dp.private_mean(rnd.aggregator.sums())
        else:
            assert rnd.aggregator is not None
            mean_delta = rnd.aggregator.mean()
        new_weights = self.optimizer.apply(self.weights, mean_delta)
        if not all(np.isfinite(w).all() for w in new_weights):
            self._fail(rnd, "aggregate is not finite", **counts)
            return False
        downlink: tuple[bytes, codec.ModelDelta] | None = None
        if self.downlink_spec is not None:
            # Devices holding the previous model fetch a compressed delta; the server adopts the
            # same reconstruction, so everyone holds identical weights (and errors do not pile up).
            blob = codec.encode_model_delta(
                new_weights, self.weights, self.downlink_spec, seed=rnd.round_seed
            )
            downlink = (blob, codec.decode_model_delta(blob, self.shapes))
            new_weights = downlink[1].apply(self.weights)
        weights_sha = self.blobs.put(pack_weights(new_weights))
        keys, arrays = self.optimizer.state_arrays()
        optimizer_sha = self.blobs.put(_pack_state(keys, arrays)) if keys else None
        aggregation_s = time.time() - t_agg
        eval_loss = eval_acc = None
        ev = self.job.evaluation
        if (
            self.central_data is not None
            and ev.central_every
            and rnd.number % ev.central_every == 0
        ):
            self.evaluator.set_weights(new_weights)
            result = self.evaluator.evaluate(*self.central_data)
            eval_loss, eval_acc = result.loss, result.accuracy
        slowest = max((r.train_time_s for r in rnd.reports.values()), default=0.0)
        privacy: dict[str, float] = {}
        if self.dp is not None:
            privacy["dp_clip"] = self.dp.clip
            privacy["epsilon"] = self.dp.account()
            self.dp.after_round(rnd.within_clip, len(rnd.reports))
        rnd.advance(RoundState.COMMITTED)
        delta = self._weights_delta(self.weights_sha, *downlink) if downlink else None
        self.store.commit_round(
            rnd.rid,
            self.job.name,
            rnd.number,
            weights_sha,
            optimizer_sha,
            delta=(delta.ref.sha256, delta.base_sha) if delta else None,
            train_loss=rnd.weighted_metric("loss"),
            train_accuracy=rnd.weighted_metric("accuracy"),
            eval_loss=eval_loss,
            eval_accuracy=eval_acc,
            aggregation_s=aggregation_s,
            slowest_train_s=slowest,
            **privacy,
            **counts,
        )
        self.weights_delta = delta
        self.weights, self.weights_sha = new_weights, weights_sha
        log.info(
            "round %d committed: %d reported, %d dropped, accuracy %s",
            rnd.number,
            counts["reported"],
            counts["dropped"],
            f"{eval_acc:.3f}" if eval_acc is not None else "n/a",
        )
        return True

    def _fail(self, rnd: RoundRun, reason: str, **fields: Any) -> None:
        rnd.advance(RoundState.FAILED)
        self.store.transition(rnd.rid, RoundState.FAILED.value, reason=reason, **fields)
        log.warning(
            "round %d (%s, attempt %d) failed: %s", rnd.number, rnd.kind, rnd.attempt, reason
        )


def _pack_state(keys: list[str], arrays: list[np.ndarray]) -> bytes:
    """Optimizer state (FedAvgM/FedAdam/FedYogi moments) as a checkpoint blob."""
    return msgpack.packb(
        {"keys": keys, "tensors": [m.encode_tensor(a) for a in arrays]}, use_bin_type=True
    )


def _unpack_state(data: bytes) -> tuple[list[str], list[np.ndarray]]:
    """Inverse of `_pack_state`; FedgeError if the blob is corrupt."""
    try:
        raw = msgpack.unpackb(data, raw=False)
        return list(raw["keys"]), [m.decode_tensor(t) for t in raw["tensors"]]
    except (ValueError, KeyError, TypeError, ProtocolError, msgpack.UnpackException) as exc:
        raise FedgeError(f"optimizer checkpoint is corrupt: {exc}") from exc
