"""Everything the server sends devices: tasks, acks, retry windows, round-opens, SecAgg requests.

Replies that end an exchange carry the device's next check-in window (pace steering): the
`Pacer` spreads a fleet's check-ins so that about the number of devices the next round needs
arrive when it wants them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable
from typing import Protocol

from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.server.job_settings import SelectionConfig
from fedge.server.rounds import RoundRun, RoundState
from fedge.server.runtime import JobRuntime
from fedge.server.selection import SelectionPool, WakePlan

log = logging.getLogger("fedge.server")


class Publish(Protocol):
    """Publish ``data`` on ``topic`` at ``qos``; False when it could not be sent."""

    def __call__(self, topic: str, data: bytes, qos: int = 1) -> Awaitable[bool]: ...


class Pacer:
    """The check-in windows a job hands out (pace steering)."""

    def __init__(
        self,
        runtime: JobRuntime,
        pool: SelectionPool,
        selection: SelectionConfig,
        rng: random.Random,
    ):
        self.runtime = runtime
        self.pool = pool
        self.selection = selection
        self.rng = rng

    def eta(self) -> float:
        """Seconds until the next selection is likely to want devices.

        Before the first round that is the end of the wait for the fleet (the round-open wakes
        devices earlier if the fleet is complete sooner): a device told to come back in a
        second would keep the whole connecting fleet checking in every second.
        """
        rnd = self.runtime.current
        if rnd is None:
            return max(self.runtime.fleet_wait_until - time.time(), 1.0)
        if rnd.state == RoundState.SELECTING:
            return 1.0
        return max(rnd.deadline - time.time(), 1.0)

    def window(self, eta_s: float | None = None) -> float:
        """A device's next check-in window, for a round wanted in ``eta_s`` (default: `eta`)."""
        return self.pool.retry_window(
            self.rng,
            self.eta() if eta_s is None else eta_s,
            self.selection.selected_per_round,
            online=len(self.runtime.online),
        )


class Outbox:
    """Sends one job's messages to its fleet's devices."""

    def __init__(
        self, job_id: str, fleet: str, runtime: JobRuntime, publish: Publish, pacer: Pacer
    ):
        self.job_id = job_id
        self.fleet = fleet
        self.runtime = runtime
        self.publish = publish
        self.pacer = pacer
        self._pending: set[asyncio.Task[int]] = set()

    async def send(self, device_id: str, message: m.Message, qos: int = 1) -> int:
        """Publish ``message`` to one device; returns its size in bytes."""
        rnd = self.runtime.current
        envelope = m.make(message, job_id=self.job_id, round_id=rnd.number if rnd else None)
        data = envelope.pack()
        await self.publish(topics.device_down(self.fleet, device_id), data, qos)
        return len(data)

    def post(self, device_id: str, message: m.Message) -> None:
        """Send without waiting for the broker's acknowledgement (acks, refusals, retry windows).

        The inbound handler runs one message at a time: awaiting every PUBACK would cap the
        ingest rate at one broker round trip per message. QoS 0: such a reply is only useful
        while the device is connected (a device that misses one checks in again), and the
        client keeps no per-message state for it.
        """
        task = asyncio.create_task(self.send(device_id, message, qos=0))
        self._pending.add(task)
        task.add_done_callback(self._posted)

    def _posted(self, task: asyncio.Task[int]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reply to a device was not published: %s", task.exception())

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for replies still being published, e.g. before the job ends."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)

    def retry(self, device_id: str, reason: str, eta_s: float | None = None) -> None:
        """Not now: come back after a window (for a round wanted in ``eta_s``)."""
        window = self.pacer.window(eta_s)
        self.post(device_id, m.RetryLater(reason=reason, retry_after_s=window))

    def end_task(self, device_id: str, refusal: str | None = None) -> None:
        """Ack a device's last message of a task with its next check-in window."""
        window = self.pacer.window()
        self.post(
            device_id, m.Ack(accepted=refusal is None, reason=refusal or "", retry_after_s=window)
        )

    def refuse(self, device_id: str, reason: str) -> None:
        """A negative ack without a window (a refused secure-aggregation message)."""
        self.post(device_id, m.Ack(accepted=False, reason=reason))

    def error(self, device_id: str, code: str, message: str) -> None:
        """Tell a device that its message could not be read."""
        self.post(device_id, m.ErrorReport(code=code, message=message))

    async def send_task(self, rnd: RoundRun, device_id: str, task: m.Task) -> None:
        """A round's task to one of its devices (counted in the round's downlink)."""
        rnd.downlink_bytes += await self.send(device_id, task)

    async def send_stage(
        self, rnd: RoundRun, device_id: str, stage: str, data: dict[str, object]
    ) -> None:
        """A secure-aggregation request to one device (counted in the round's downlink)."""
        rnd.downlink_bytes += await self.send(device_id, m.SecAggStage(stage=stage, data=data))

    async def round_open(self, number: int, wake: WakePlan) -> None:
        """Wake a sample of waiting devices for round ``number``.

        QoS 0: the round-open goes to many devices, and a PUBACK from every one would cost
        more than the message; a device that misses it checks in after its retry window.
        """
        packed = m.make(
            m.RoundOpen(round=number, wake_probability=wake.probability),
            job_id=self.job_id,
            round_id=number,
        ).pack()
        for topic in wake.topics(self.fleet):
            await self.publish(topic, packed, 0)
