"""The job loop: runs one job's rounds over MQTT until it is done, stopped, or fails.

`Coordinator` wires the parts a job needs (engine, aggregation, inbound, outbox, checkpoints)
from the environment it is given, then runs rounds; `run_round` only calls those parts, the
same way for every aggregation mode and for training and evaluation rounds alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fedge.edge_client.arrays import Array
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.errors import ConfigError, FedgeError
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, Limits
from fedge.edge_client.trainer import LocalTrainer
from fedge.server.aggregation import RoundContext, aggregation_for_job
from fedge.server.blobs import BlobStore, SignedBlobs
from fedge.server.checkpoints import Checkpoints
from fedge.server.engine import RoundEngine
from fedge.server.evaluation import CentralEvaluator
from fedge.server.inbound import Inbound
from fedge.server.job import JobConfig, job_from_dict
from fedge.server.optimizers import ServerOptimizer
from fedge.server.outbox import Outbox, Pacer, Publish
from fedge.server.recruitment import Recruiter
from fedge.server.round_plans import EvalRounds, RoundPlan, TrainRounds
from fedge.server.rounds import RoundRun, RoundState
from fedge.server.runtime import ActiveRound, JobRuntime
from fedge.server.selection import SelectionPool, round_rng
from fedge.server.store import Store

log = logging.getLogger("fedge.server")


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
        central_data: tuple[Array, Array] | None = None,
        served_bytes: Callable[[], int] = lambda: 0,
        expect_devices: int = 0,
        enrolment_key: Any = None,
    ):
        self.job = job
        self.artifact = artifact
        self.store = store
        self.blobs = blobs
        self.served_bytes = served_bytes
        self.expect_devices = expect_devices
        self.shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        self.runtime = JobRuntime(job.name, store)
        self.engine = RoundEngine(store, job.name, job.seed)
        self.pool = SelectionPool(job.selection)
        rng = round_rng(job.seed, job.name, 0, 0, "retry-windows")
        self.outbox = Outbox(
            job.name,
            job.fleet,
            self.runtime,
            publish,
            Pacer(self.runtime, self.pool, job.selection, rng),
        )
        self.aggregation = aggregation_for_job(job, artifact.manifest.param_count, enrolment_key)
        self.checkpoints = Checkpoints(
            job,
            artifact,
            SignedBlobs(blobs, signing_key, public_url),
            ServerOptimizer(job.optimizer),
        )
        self.trainer = LocalTrainer(artifact)
        evaluator = CentralEvaluator(self.trainer, central_data, job.evaluation.central_every)
        self.train_rounds = TrainRounds(
            job, self.checkpoints, self.engine, self.aggregation, evaluator
        )
        self.eval_rounds = EvalRounds(job, self.checkpoints, self.engine)
        self.recruiter = Recruiter(
            job.name,
            job.seed,
            job.selection,
            self.runtime,
            self.pool,
            self.outbox,
            self.aggregation.privacy,
            rng,
        )
        self.inbound = Inbound(
            job, self.runtime, store, self.pool, self.outbox, self._resend_task, limits
        )

    # the operator's controls ---------------------------------------------------------------
    def pause(self) -> None:
        """Pause before the next round (the round in progress runs to its end)."""
        self.runtime.running.clear()

    def resume(self) -> None:
        self.runtime.running.set()

    def stop(self, reason: str = "stopped by operator") -> None:
        """Stop the job after the current step."""
        self.runtime.finish("stopped", reason)
        rnd = self.runtime.current
        if rnd is not None:
            rnd.enough.set()

    async def on_message(self, topic: str, payload: bytes) -> None:
        """One MQTT message from a device of the job's fleet."""
        await self.inbound.on_message(topic, payload)

    # resume ------------------------------------------------------------------------------
    def restore_or_init(self) -> int:
        """Load the last committed checkpoint (or the artifact's initial weights); its round.

        Raises
        ------
        ConfigError
            If the store holds this job with other settings (resuming would mix two jobs).
        """
        row = self.store.job(self.job.name)
        if row is None:
            self.store.create_job(self.job.name, self.job.to_dict())
            row = self.store.job(self.job.name)
            assert row is not None
        else:
            self._check_same_job(row["config"])
        self.engine.recover()
        if row["weights_sha"]:
            self.checkpoints.restore(row)
            log.info(
                "job %s: resuming after committed round %d", self.job.name, row["committed_round"]
            )
            committed = [
                r for r in self.store.rounds(self.job.name, "train") if r["state"] == "committed"
            ]
            self.aggregation.privacy.restore(committed)
        else:
            self.checkpoints.start_fresh(self.trainer.get_weights())
        self.runtime.restored(row["status"])
        return int(row["committed_round"])

    def _check_same_job(self, stored: dict[str, Any]) -> None:
        try:
            before = job_from_dict(stored)
        except (ConfigError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"job {self.job.name!r} is stored with an unreadable config: {exc}"
            ) from exc
        changes = self.job.differences(before)
        if changes:
            raise ConfigError(
                f"job {self.job.name!r} already exists with other settings ({'; '.join(changes)}); "
                "resume it with its stored settings or start a job with another name"
            )

    # the job -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run rounds until the job has committed all of them (or failed, or was stopped)."""
        try:
            await self._run_rounds()
        finally:
            await self.outbox.drain()

    async def _run_rounds(self) -> None:
        committed = self.restore_or_init()
        await self._wait_for_fleet()
        runtime = self.runtime
        while not runtime.finished.is_set() and committed < self.job.rounds:
            await runtime.running.wait()
            if runtime.finished.is_set():
                break
            stop = self.aggregation.privacy.stop_reason(self._population, committed)
            if stop is not None:
                runtime.finish("finished", stop)
                return
            number = committed + 1
            if await self.run_round(self.train_rounds, number):
                committed = number
                every = self.job.evaluation.federated_every
                if every and number % every == 0:
                    await self.run_round(self.eval_rounds, number)
            elif (
                self.store.attempts(self.job.name, "train", number)
                >= self.job.selection.max_attempts
            ):
                runtime.finish(
                    "failed", f"round {number} failed {self.job.selection.max_attempts} times"
                )
                return
        if not runtime.finished.is_set():
            runtime.finish("finished", None)

    def _population(self) -> int:
        """Devices of the fleet the server knows: the population DP sampling draws from."""
        return max(self.store.device_count(self.job.fleet), len(self.runtime.online))

    async def _wait_for_fleet(self) -> None:
        """Before the first round, give an expected fleet (e.g. a simulation) time to come online.

        Up to a minute plus 10 ms per expected device (10,000 sessions take ~30-50 s to open).
        """
        runtime = self.runtime
        runtime.fleet_wait_until = time.time() + 60.0 + 0.01 * self.expect_devices
        while len(runtime.online) < self.expect_devices and time.time() < runtime.fleet_wait_until:
            await asyncio.sleep(0.05)
        runtime.fleet_wait_until = 0.0

    async def run_round(self, plan: RoundPlan[Any], number: int) -> bool:
        """One round of ``plan``'s kind: select, configure, collect, aggregate, commit."""
        rnd = self.engine.start(number, plan.kind)
        rnd.target = plan.target
        self.runtime.selecting, self.runtime.active = rnd, None
        served_before = self.served_bytes()
        log.info(
            "round %d (%s, attempt %d): selecting %d devices",
            number,
            plan.kind,
            rnd.attempt,
            plan.wanted,
        )
        recruited = await self.recruiter.recruit(rnd, plan.wanted, plan.minimum)
        if recruited is None:
            return self.engine.fail(rnd, "job stopped")
        chosen, rest = recruited
        active = self.configure(plan, rnd, chosen)
        self.recruiter.turn_away(rest)
        await asyncio.gather(*(self.outbox.send_task(rnd, d, active.task) for d in chosen))
        self.engine.advance(rnd, RoundState.COLLECTING)
        await active.collection.collect()
        rnd.downlink_bytes += self.served_bytes() - served_before
        counts = self.engine.close_collection(rnd)
        if self.runtime.finished.is_set():
            return self.engine.fail(rnd, "job stopped", **counts)
        if len(rnd.reports) < plan.minimum:
            reason = (
                f"only {len(rnd.reports)} of the minimum {plan.minimum} reported by the deadline"
            )
            return self.engine.fail(rnd, reason, **counts)
        self.engine.advance(rnd, RoundState.AGGREGATING, reason=None, **counts)
        try:
            return plan.finish(rnd, active.collection, counts)
        except FedgeError as exc:  # a bad aggregate fails the round, never the server
            log.exception("round %d: aggregation failed", number)
            return self.engine.fail(rnd, f"aggregation failed: {exc}", **counts)

    def configure(self, plan: RoundPlan[Any], rnd: RoundRun, chosen: list[str]) -> ActiveRound:
        """Make ``chosen`` the devices of ``rnd`` (CONFIGURING): its collection and its task."""
        collection = plan.open(self._context(rnd, chosen))
        self.engine.configure(rnd, chosen, time.time() + self.job.selection.round_deadline_s)
        active = ActiveRound(rnd, collection, plan.task(rnd, collection))
        self.runtime.selecting, self.runtime.active = None, active
        return active

    def _context(self, rnd: RoundRun, chosen: list[str]) -> RoundContext:
        """What the round's collection needs: the job's model state and the round's channels."""
        return RoundContext(
            rnd=rnd,
            chosen=chosen,
            shapes=self.shapes,
            codec=self.job.codec,
            weights_sha=self.checkpoints.weights_sha,
            prior=self.checkpoints.prior,
            record=lambda device_id, report: self.engine.record_report(rnd, device_id, report),
            reject=self.inbound.reject,
            send_stage=lambda device_id, stage, data: self.outbox.send_stage(
                rnd, device_id, stage, data
            ),
        )

    async def _resend_task(self, device_id: str) -> None:
        active = self.runtime.active
        if active is not None:
            await self.outbox.send_task(active.run, device_id, active.task)
