"""Recruiting a round's devices: wake a sample of the waiting fleet, wait for check-ins, choose."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from fedge.server.job_settings import SelectionConfig
from fedge.server.outbox import Outbox
from fedge.server.privacy.job_privacy import JobPrivacy
from fedge.server.rounds import RoundRun
from fedge.server.runtime import JobRuntime
from fedge.server.selection import SelectionPool, round_rng

log = logging.getLogger("fedge.server")
POLL_S = 0.05


class Recruiter:
    """Runs a round's SELECTING state: round-open, check-ins into the pool, the draw."""

    def __init__(
        self,
        job_id: str,
        seed: int,
        selection: SelectionConfig,
        runtime: JobRuntime,
        pool: SelectionPool,
        outbox: Outbox,
        privacy: JobPrivacy,
        rng: random.Random,
    ):
        self.job_id = job_id
        self.seed = seed
        self.selection = selection
        self.runtime = runtime
        self.pool = pool
        self.outbox = outbox
        self.privacy = privacy
        self.rng = rng  # the job's pacing RNG (wake groups)

    async def recruit(
        self, rnd: RoundRun, want: int, minimum: int
    ) -> tuple[list[str], list[str]] | None:
        """(chosen, not chosen) among the devices that checked in for ``rnd``; None if the job
        stopped while it waited."""
        t0 = time.time()
        online = len(self.runtime.online)
        wake = self.pool.wake_plan(self.rng, want, online, grouped=self.privacy.wakes_by_group)
        await self.outbox.round_open(rnd.number, wake)
        while not self.runtime.finished.is_set() and not self.pool.should_close(
            want, minimum, len(self.runtime.online), time.time() - t0, woke_everyone=wake.everyone
        ):
            await asyncio.sleep(POLL_S)
        if self.runtime.finished.is_set():
            return None
        self.pool.observe_response(wake.woken, want)
        seeded = round_rng(self.seed, self.job_id, rnd.number, rnd.attempt, f"select-{rnd.kind}")
        return self.pool.select(self.privacy.sampling_rng(seeded), want)

    def turn_away(self, devices: list[str]) -> None:
        """Retry windows for the devices a configured round did not choose."""
        for device_id in devices:
            self.outbox.retry(device_id, "not selected this round")
