"""The device agent: an explicit state machine that checks in, trains, and reports over MQTT.

The agent owns the states and every transition between them; the session carries messages,
the task inputs, task engine and secure-aggregation driver do the work of a task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.edge_client.config import DeviceConfig
from fedge.edge_client.device_identity import DeviceIdentity
from fedge.edge_client.eligibility import ineligibility
from fedge.edge_client.errors import (
    ArtifactError,
    CodecError,
    DataError,
    PolicyError,
    PrivacyError,
    SecAggError,
)
from fedge.edge_client.hooks import AgentHooks
from fedge.edge_client.mqtt_link import MqttLink
from fedge.edge_client.pending import PendingTaskFile
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.runtime import runtime_name, runtime_version
from fedge.edge_client.secure_task import SecureTaskDriver
from fedge.edge_client.session import DeviceSession
from fedge.edge_client.task_engine import LocalData, TaskEngine
from fedge.edge_client.task_inputs import TaskInputs, TaskInputSource, blob_fetcher
from fedge.edge_client.trainer_cache import TrainerCache

__all__ = ["TRANSITIONS", "AgentHooks", "AgentState", "DeviceAgent", "LocalData", "TrainerCache"]

log = logging.getLogger("fedge.device")
# What ends a task with an error report to the server (and no resume): bad input, not a bad link.
TASK_ERRORS = (ArtifactError, CodecError, DataError, PolicyError, PrivacyError, SecAggError)


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
        self.rounds_reported = 0
        self.uplink_bytes = 0
        device_id = config.device_id
        self.fetcher = blob_fetcher(self.state_dir, server_key, config.broker.ca_file)
        self.identity = DeviceIdentity.from_config(config)
        self.session = DeviceSession(config, self.rng)
        self.pending = PendingTaskFile(self.state_dir, device_id)
        self.inputs = TaskInputSource(self.fetcher, self.trainers, self.hooks, device_id)
        self.engine = TaskEngine(data, self.trainers, self.hooks, self.state_dir, self.train_rng)
        self.secure = SecureTaskDriver(
            self.engine, self.session, self.identity, self.hooks, self.state_dir
        )

    @property
    def link(self) -> MqttLink:
        """The session's MQTT link (its ``stats`` count what crossed it)."""
        return self.session.link

    @property
    def job_state(self) -> str | None:
        """The last job state the server broadcast."""
        state: str | None = self.session.job_state
        return state

    # state machine -------------------------------------------------------------------------
    def _set(self, new: AgentState) -> None:
        """Move to ``new``: the one place the state changes, always along `TRANSITIONS`."""
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"agent {self.config.device_id}: {self.state.value} -> {new.value}")
        self.state = new
        self.history.append(new)

    def _back_to_waiting(self) -> None:
        """End a task in WAITING (unless the agent is already offline)."""
        if self.state not in (AgentState.WAITING, AgentState.OFFLINE):
            self._set(AgentState.WAITING)

    # main loop -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; reconnects and resumes by itself."""
        async with self.session.running(stop):
            while not stop.is_set():
                self._set(AgentState.OFFLINE)
                if not await self.session.until_connected(stop):
                    break
                self._set(AgentState.CONNECTED)
                try:
                    pending = self.pending.load()
                    if pending is not None:
                        await self._do_task(pending.task, pending.job_id, pending.round_id)
                    await self._check_in_loop(stop)
                except (ConnectionError, TimeoutError) as exc:
                    log.info("device %s: connection trouble: %s", self.config.device_id, exc)

    async def _check_in_loop(self, stop: asyncio.Event) -> None:
        """Check in, then run the task or wait out the retry window; again while connected."""
        while not stop.is_set() and self.link.connected.is_set():
            if not self.hooks.available():
                self._set(AgentState.WAITING)
                await self.session.pause(1.0)
                continue
            eligibility = self.hooks.eligibility()
            if ineligibility(eligibility, self.config.eligibility) is not None:
                self._set(AgentState.WAITING)
                await self.session.pause(30.0)
                continue
            await self.session.send(self._checkin(eligibility))
            self._set(AgentState.CHECKED_IN)
            reply = await self.session.receive((m.Task, m.RetryLater), self.checkin_timeout_s)
            if reply is None:
                self._set(AgentState.WAITING)
                continue
            message = reply.message
            if isinstance(message, m.Task):
                self.pending.save(reply.raw)
                window = await self._do_task(message, reply.job_id, reply.round_id)
                if window is not None:  # the server said when to come back
                    await self._wait_for_retry(window * self.rng.uniform(1.0, 1.1))
            else:
                assert isinstance(message, m.RetryLater)
                self._set(AgentState.WAITING)
                await self._wait_for_retry(message.retry_after_s * self.rng.uniform(1.0, 1.1))

    def _checkin(self, eligibility: m.Eligibility) -> m.CheckIn:
        return m.CheckIn(
            eligibility=eligibility,
            runtime=runtime_name(),
            runtime_version=runtime_version(),
            examples=len(self.data.y_train),
            cached_artifacts=self.fetcher.cached_digests(),
            profile=self.config.profile,
            identity_key=self.identity.public_key(),
            identity_cert=self.identity.certificate_bytes(),
        )

    async def _wait_for_retry(self, seconds: float) -> None:
        """Sleep through a retry window, or wake early on a round-open broadcast (if sampled)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            item = await self.session.receive((m.RoundOpen, m.JobState), left)
            if item is None:
                return
            message = item.message
            if isinstance(message, m.RoundOpen) and self.rng.random() < message.wake_probability:
                await self.hooks.sleep(self.rng.uniform(0.0, 0.05))
                return

    # one task ------------------------------------------------------------------------------
    async def _do_task(
        self, task: m.Task, job_id: str | None, round_id: int | None
    ) -> float | None:
        """Run a task to its end; the check-in window of the server's last ack, if it gave one."""
        self._set(AgentState.TRAINING)
        over = False  # the pending task is kept for a resume unless it ran to its end
        try:
            refusal = self.config.policy.refusal(task)
            if refusal is not None:
                raise PolicyError(f"task refused by the device's fleet policy: {refusal}")
            if self.hooks.drops_out("before-training"):
                return None
            inputs = await self.inputs.gather(task)
            if task.kind == "evaluate":
                return await self._evaluate(inputs, job_id, round_id)
            if task.secagg is not None:
                await self._secure_task(task, inputs, job_id, round_id)
                over = True
                return None
            update = await self.engine.train(task, inputs)
            if (
                update is None
                or self.hooks.drops_out("before-report")
                or time.time() > task.deadline
            ):
                return None
            self._set(AgentState.REPORTING)
            nbytes = await self.session.send(update, job_id, round_id)
            await self.hooks.after_transfer(nbytes, "up")
            self.uplink_bytes += nbytes
            over = True  # sent: a resume would only send a duplicate
            return await self._update_acked()
        except TASK_ERRORS as exc:
            over = True
            await self._report_failure(exc, job_id, round_id)
            return None
        finally:
            if over or self._deliberately_skipped(task):
                self.pending.clear()
            self._back_to_waiting()

    async def _update_acked(self) -> float | None:
        """Wait for the ack of an update and count it; the check-in window it gave, if any."""
        ack = await self._final_ack()
        if ack is None:
            return None
        if ack.accepted:
            self.rounds_reported += 1
        else:
            log.info("device %s: update refused: %s", self.config.device_id, ack.reason)
        window: float | None = ack.retry_after_s
        return window

    async def _secure_task(
        self, task: m.Task, inputs: TaskInputs, job_id: str | None, round_id: int | None
    ) -> None:
        """Train, then run the client half of SecAgg+ to its end (or until the device drops)."""
        ready = await self.secure.prepare(task, inputs)
        if ready is None:
            return
        self._set(AgentState.REPORTING)
        if await self.secure.report(task, ready, job_id, round_id):
            self.rounds_reported += 1

    async def _evaluate(
        self, inputs: TaskInputs, job_id: str | None, round_id: int | None
    ) -> float | None:
        """Evaluate on the local test split and report; the next check-in window, if given."""
        result = await self.engine.evaluate(inputs)
        self._set(AgentState.REPORTING)
        await self.session.send(result, job_id, round_id)
        ack = await self._final_ack()
        return None if ack is None else ack.retry_after_s

    async def _report_failure(
        self, exc: Exception, job_id: str | None, round_id: int | None
    ) -> None:
        """Tell the server why the task failed, then pause: no tight loop on a lasting failure."""
        log.warning("device %s: task failed: %s", self.config.device_id, exc)
        await self.session.send(
            m.ErrorReport(code=type(exc).__name__, message=str(exc)), job_id, round_id
        )
        await self.session.pause(self.rng.uniform(5.0, 10.0))

    async def _final_ack(self) -> m.Ack | None:
        """Wait for the ack that ends a task (it carries the next check-in window)."""
        item = await self.session.receive((m.Ack,), 30.0)
        return item.message if item is not None and isinstance(item.message, m.Ack) else None

    def _deliberately_skipped(self, task: m.Task) -> bool:
        """True when the task will never be resumed: its deadline passed or the device dropped it."""
        return bool(time.time() > task.deadline or self.session.live)
