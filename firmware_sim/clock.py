"""Virtual simulated-time clocks: scaled wall time for runs, manual stepping for tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Protocol

from fedge.edge_client.errors import ConfigError


class Clock(Protocol):
    """What simulator components need from a clock; times are simulated seconds."""

    def now(self) -> float:
        """Return the current simulated time."""
        ...

    async def sleep(self, sim_seconds: float) -> None:
        """Suspend the calling task for ``sim_seconds`` of simulated time."""
        ...


class ScaledClock:
    """Simulated time running ``speedup`` times faster than wall time.

    With ``speedup=1440`` a simulated day passes in one wall minute.

    Parameters
    ----------
    speedup : float
        Simulated seconds per wall second (> 0).
    start_s : float
        Simulated time at construction (e.g. ``20 * 3600`` to start at 20:00).
    """

    def __init__(self, speedup: float, start_s: float = 0.0) -> None:
        if not (math.isfinite(speedup) and speedup > 0):
            raise ConfigError(f"clock speedup must be a finite number > 0, got {speedup}")
        self.speedup = float(speedup)
        self._start_s = float(start_s)
        self._wall0 = time.monotonic()

    def now(self) -> float:
        """Return the current simulated time."""
        return self._start_s + (time.monotonic() - self._wall0) * self.speedup

    def to_wall(self, sim_seconds: float) -> float:
        """Return how many wall seconds ``sim_seconds`` of simulated time take."""
        return sim_seconds / self.speedup

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep ``sim_seconds / speedup`` wall seconds (non-positive: just yield)."""
        await asyncio.sleep(max(0.0, sim_seconds) / self.speedup)


class ManualClock:
    """Simulated time that moves only when :meth:`advance` is called (for tests).

    Tasks in :meth:`sleep` wake once the clock has been advanced past their deadline.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = float(start_s)
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        """Return the current simulated time."""
        return self._now

    @property
    def sleepers(self) -> int:
        """Number of tasks waiting in :meth:`sleep`."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def sleep(self, sim_seconds: float) -> None:
        """Wait until the clock reaches now + ``sim_seconds`` (non-positive: just yield)."""
        if sim_seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + sim_seconds, next(self._order), fut))
        await fut

    def advance(self, sim_seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has passed.

        Raises
        ------
        ConfigError
            If ``sim_seconds`` is negative or not finite: time never runs backwards.
        """
        if not (math.isfinite(sim_seconds) and sim_seconds >= 0):
            raise ConfigError(f"a clock advances by a finite number >= 0, got {sim_seconds}")
        self._now += sim_seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
