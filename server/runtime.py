"""What the parts of a running job share: its status, the fleet's presence, the round in progress."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fedge.edge_client.protocol import messages as m
from fedge.server.aggregation import Collection
from fedge.server.rounds import RoundRun
from fedge.server.store import Store

log = logging.getLogger("fedge.server")

FINAL_STATUSES = ("finished", "stopped", "failed")


@dataclass
class ActiveRound:
    """The round in progress with what it collects and the task its devices got."""

    run: RoundRun
    collection: Collection
    task: m.Task


@dataclass
class JobRuntime:
    """The running job's shared state; its status changes persist through the store."""

    job_id: str
    store: Store
    status: str = "running"
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    running: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while paused
    online: set[str] = field(default_factory=set)
    selecting: RoundRun | None = None  # a round still choosing its devices
    active: ActiveRound | None = None
    fleet_wait_until: float = 0.0  # before the first round: when waiting for the fleet ends

    def __post_init__(self) -> None:
        self.running.set()

    @property
    def current(self) -> RoundRun | None:
        """The round in progress (choosing devices, or collecting from them)."""
        return self.active.run if self.active is not None else self.selecting

    @property
    def paused(self) -> bool:
        return not self.running.is_set()

    def finish(self, status: str, reason: str | None) -> None:
        """End the job with ``status`` (finished, stopped or failed) and persist it."""
        self.status = status
        self.store.set_job_status(self.job_id, status, reason)
        self.finished.set()
        self.running.set()  # a paused job must wake up to see that it ended
        log.info("job %s %s%s", self.job_id, status, f": {reason}" if reason else "")

    def restored(self, status: str) -> None:
        """Take over a stored job's final status (a job that ended stays ended)."""
        if status in FINAL_STATUSES:
            self.status = status
            self.finished.set()
