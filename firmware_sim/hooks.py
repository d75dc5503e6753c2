"""How a simulated device differs from a real one: profile speed, links, availability, dropouts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from fedge.edge_client.agent import AgentHooks
from fedge.edge_client.protocol.messages import Eligibility
from fedge.firmware_sim.availability import Availability
from fedge.firmware_sim.clock import Clock
from fedge.firmware_sim.network import download_time, upload_time
from fedge.firmware_sim.profiles import Charging, DeviceProfile

T = TypeVar("T")
SECURE_STAGES = ("secagg-advertise", "secagg-share", "secagg-masked", "secagg-unmask")


class SimHooks(AgentHooks):
    """Makes the real agent behave like one device of the given profile, on a virtual clock."""

    def __init__(
        self,
        profile: DeviceProfile,
        availability: Availability,
        clock: Clock,
        rng: np.random.Generator,
        dropout_p: float | None = None,
        away_after_dropout_s: float = 30.0,
    ):
        super().__init__()
        self.profile = profile
        self.availability = availability
        self.clock = clock
        self.rng = rng
        self.dropout_p = profile.dropout_p if dropout_p is None else dropout_p
        self.battery = 1.0
        self.sim_compute_s = 0.0
        self.sim_transfer_s = {"up": 0.0, "down": 0.0}
        self.dropouts = 0
        self.away_after_dropout_s = away_after_dropout_s
        self._back_at = -1.0
        self._drop_at: str | None = None

    async def compute(self, work: Callable[[], T]) -> T:
        """Train in the event loop: a worker's agents train one at a time anyway (one
        interpreter per model), the simulated models train in milliseconds, and a thread hop
        per task cost more than that (GIL hand-offs with the loop serving thousands of
        sessions). The simulated time comes from `after_compute`."""
        return work()

    def _wall(self, sim_seconds: float) -> float:
        to_wall = getattr(self.clock, "to_wall", None)
        return float(to_wall(sim_seconds)) if to_wall else sim_seconds

    def available(self) -> bool:
        if time.monotonic() < self._back_at:
            return False  # dropped out mid-round: gone for a while
        return self.availability.is_available(self.clock.now())

    def eligibility(self) -> Eligibility:
        charging = self.profile.charging == Charging.MAINS or self.available()
        return Eligibility(
            charging=charging,
            unmetered=True,
            idle=True,
            battery=self.battery,
            free_memory_mb=self.profile.memory_mb,
        )

    def drops_out(self, stage: str) -> bool:
        """One draw per task, after training; in secure mode at a random protocol stage.

        The first stage asked of a task ("after-training", or "secagg-advertise" in secure
        mode) draws whether the device vanishes during this task, and where.
        """
        if stage in ("after-training", "secagg-advertise"):
            self._drop_at = None
            if self.rng.random() < self.dropout_p:
                stages = SECURE_STAGES if stage.startswith("secagg") else (stage,)
                self._drop_at = stages[int(self.rng.integers(len(stages)))]
        if stage != self._drop_at:
            return False
        self.dropouts += 1
        self._back_at = time.monotonic() + self.away_after_dropout_s
        return True

    async def after_compute(self, wall_s: float) -> None:
        """Sleep so training takes compute_factor times what it took on this host."""
        sim_s = wall_s * self.profile.compute_factor
        self.sim_compute_s += sim_s
        if self.profile.battery is not None and self.profile.charging != Charging.MAINS:
            self.battery = self.profile.battery.level_after(
                self.battery, train_s=sim_s, idle_s=0.0, charging_s=0.0
            )
        extra = self._wall(sim_s) - wall_s
        if extra > 0:
            await self.sleep_wall(extra)

    async def after_transfer(self, nbytes: int, direction: str) -> None:
        """Sleep for the simulated transfer time of this profile's link."""
        timing = upload_time if direction == "up" else download_time
        sim_s = timing(self.profile, nbytes)
        self.sim_transfer_s[direction] += sim_s
        await self.sleep_wall(self._wall(sim_s))

    async def sleep_wall(self, seconds: float) -> None:
        await super().sleep(seconds)
