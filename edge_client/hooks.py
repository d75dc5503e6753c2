"""Where a simulated device differs from a real one: the agent asks these hooks, never the sim."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fedge.edge_client.probe import probe_eligibility
from fedge.edge_client.protocol import messages as m

T = TypeVar("T")


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
