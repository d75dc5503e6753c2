"""Inbound handling: each MQTT message from a device becomes one call on the job, or a refusal.

A message is parsed and checked once here (topic, envelope, replay, body), then dispatched by
type. Reports go to the round's collection after the checks every report shares (right job,
right round, selected, not a duplicate, not late). A refusal is logged with the device and
its reason, counted, and answered; it never changes the round.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fedge.edge_client.errors import CodecError, ProtocolError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, Limits, ReplayGuard, unpack
from fedge.server.job import JobConfig
from fedge.server.outbox import Outbox
from fedge.server.runtime import ActiveRound, JobRuntime
from fedge.server.selection import SelectionPool, ineligibility
from fedge.server.store import Store

log = logging.getLogger("fedge.server")

ResendTask = Callable[[str], Awaitable[None]]


class Inbound:
    """Turns one job's inbound device messages into engine calls and refusals."""

    def __init__(
        self,
        job: JobConfig,
        runtime: JobRuntime,
        store: Store,
        pool: SelectionPool,
        outbox: Outbox,
        resend_task: ResendTask,
        limits: Limits = DEFAULT_LIMITS,
    ):
        self.job = job
        self.runtime = runtime
        self.store = store
        self.pool = pool
        self.outbox = outbox
        self.resend_task = resend_task
        self.limits = limits
        self.replay = ReplayGuard(limits.max_clock_skew_s)
        self._handlers: dict[type[m.Message], Callable[..., Awaitable[None]]] = {
            m.CheckIn: self._on_checkin,
            m.Update: self._on_update,
            m.EvalResult: self._on_eval_result,
            m.SecAggStage: self._on_secagg,
            m.ErrorReport: self._on_error,
        }

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one MQTT message from a device; refuse and log anything invalid."""
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
            handler = self._handlers.get(type(message))
            if handler is None:
                raise ProtocolError(f"devices may not send {message.TYPE!r}")
            await handler(device_id, envelope.job_id, envelope.round_id, message, len(payload))
        except (ProtocolError, CodecError) as exc:
            self.reject(device_id, topic, str(exc))
            if device_id is not None:
                self.outbox.error(device_id, type(exc).__name__, str(exc))

    def reject(self, device_id: str | None, topic: str, reason: str) -> None:
        """Log, store and count a refused message."""
        log.warning("refused message from %s on %s: %s", device_id or "?", topic, reason)
        self.store.record_rejection(device_id, topic, reason)
        rnd = self.runtime.current
        if rnd is not None:
            rnd.refused += 1

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
            self.runtime.online.add(device_id)
        else:
            self.runtime.online.discard(device_id)
            self.pool.remove(device_id)

    async def _on_checkin(
        self, device_id: str, _job: Any, _round: Any, checkin: m.CheckIn, _n: int
    ) -> None:
        self.store.upsert_device(
            device_id,
            self.job.fleet,
            online=True,
            profile=checkin.profile,
            runtime=f"{checkin.runtime} {checkin.runtime_version}",
            eligibility=vars(checkin.eligibility),
            identity_key=checkin.identity_key,
        )
        runtime = self.runtime
        if runtime.finished.is_set() or runtime.paused:
            self.outbox.retry(device_id, f"job {runtime.status}", 60.0)
            return
        active = runtime.active
        if active is not None and self._awaits(active, device_id):
            await self.resend_task(device_id)  # the device restarted: send its task again
            return
        why = ineligibility(checkin, self.job.selection)
        if why is not None:
            self.outbox.retry(device_id, f"not eligible: {why}", self.job.selection.retry_window_s)
            return
        if runtime.selecting is not None:
            self.pool.add(device_id, checkin)
            return
        self.outbox.retry(device_id, "round in progress")

    @staticmethod
    def _awaits(active: ActiveRound, device_id: str) -> bool:
        """Whether the round still waits for this device's result of its task."""
        rnd = active.run
        return (
            device_id in rnd.selected
            and device_id not in rnd.reports
            and device_id not in rnd.failed
            and rnd.open_for_reports
        )

    async def _on_update(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        update: m.Update,
        nbytes: int,
    ) -> None:
        active, refusal = self._report_check(device_id, job_id, round_id, "train", open_only=True)
        if active is not None:
            refusal = active.collection.on_update(device_id, update, nbytes)
        if refusal is not None:
            self.reject(device_id, "update", refusal)
        self.outbox.end_task(device_id, refusal)

    async def _on_eval_result(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        result: m.EvalResult,
        nbytes: int,
    ) -> None:
        active, refusal = self._report_check(
            device_id, job_id, round_id, "evaluate", open_only=True
        )
        if active is not None:
            refusal = active.collection.on_eval_result(device_id, result, nbytes)
        if refusal is not None:
            self.reject(device_id, "eval_result", refusal)
        self.outbox.end_task(device_id, refusal)

    async def _on_secagg(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        stage: m.SecAggStage,
        nbytes: int,
    ) -> None:
        # The secure-aggregation state machine orders its stages itself: no lateness check.
        active, refusal = self._report_check(device_id, job_id, round_id, "train", open_only=False)
        if active is not None:
            refusal = active.collection.on_secagg(device_id, stage, nbytes)
        if refusal is not None:
            self.reject(device_id, f"secagg/{stage.stage}", refusal)
            self.outbox.refuse(device_id, refusal)

    async def _on_error(
        self, device_id: str, _job: Any, round_id: int | None, report: m.ErrorReport, _n: int
    ) -> None:
        log.warning("device %s reports %s: %s", device_id, report.code, report.message)
        rnd = self.runtime.current
        if rnd is not None and round_id == rnd.number and device_id in rnd.selected:
            rnd.failed.add(device_id)  # its task failed: do not hand it the same task again

    def _report_check(
        self,
        device_id: str,
        job_id: str | None,
        round_id: int | None,
        kind: str,
        *,
        open_only: bool,
    ) -> tuple[ActiveRound | None, str | None]:
        """(the round a report belongs to, None) or (None, why it is refused)."""
        rnd = self.runtime.current
        if job_id != self.job.name:
            return None, f"unknown job {job_id!r}"
        if rnd is None or round_id != rnd.number or rnd.kind != kind:
            current = rnd.number if rnd else None
            return None, f"stale message for round {round_id}; current round is {current}"
        active = self.runtime.active
        if active is None or device_id not in rnd.selected:
            return None, f"device was not selected for round {rnd.number}"
        if device_id in rnd.reports:
            return None, "duplicate report"
        if open_only and not rnd.open_for_reports:
            return None, f"round {rnd.number} is closed ({rnd.state.value}); late report refused"
        return active, None
