"""The round state machine (explicit states, a transition table) and one round's bookkeeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum

from fedge.server.control import LiveRound


class RoundState(StrEnum):
    """States of one round; every transition is persisted (by `fedge.server.engine`)."""

    SELECTING = "selecting"
    CONFIGURING = "configuring"
    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    FAILED = "failed"


TRANSITIONS: dict[RoundState, frozenset[RoundState]] = {
    RoundState.SELECTING: frozenset({RoundState.CONFIGURING, RoundState.FAILED}),
    RoundState.CONFIGURING: frozenset({RoundState.COLLECTING, RoundState.FAILED}),
    RoundState.COLLECTING: frozenset({RoundState.AGGREGATING, RoundState.FAILED}),
    RoundState.AGGREGATING: frozenset({RoundState.COMMITTED, RoundState.FAILED}),
    RoundState.COMMITTED: frozenset(),
    RoundState.FAILED: frozenset(),
}
# Reports count while tasks go out (CONFIGURING: a fast device may answer before the last task
# is sent) and while the round collects.
OPEN_FOR_REPORTS = frozenset({RoundState.CONFIGURING, RoundState.COLLECTING})


class IllegalTransition(RuntimeError):
    """A transition that the table does not allow (a bug, never bad input)."""


def check_transition(old: RoundState, new: RoundState, what: str) -> None:
    """Raise IllegalTransition unless the table allows ``old -> new``."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{what}: {old.value} -> {new.value}")


@dataclass
class ParticipantReport:
    """What one device reported in a round."""

    examples: int
    loss: float
    accuracy: float
    train_time_s: float
    uplink_bytes: int


@dataclass
class RoundRun:
    """The round in progress, in memory; `fedge.server.engine.RoundEngine` moves its state
    and persists every move, and it alone sets `state`."""

    rid: int
    job_id: str
    number: int
    attempt: int
    kind: str
    round_seed: int
    state: RoundState = RoundState.SELECTING
    started_at: float = field(default_factory=time.time)
    deadline: float = 0.0
    selected: set[str] = field(default_factory=set)
    reports: dict[str, ParticipantReport] = field(default_factory=dict)
    refused: int = 0
    failed: set[str] = field(default_factory=set)
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    target: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def advance(self, new_state: RoundState) -> None:
        """Move to ``new_state`` if the table allows it (in memory only: the engine persists)."""
        check_transition(self.state, new_state, f"round {self.number}")
        self.state = new_state

    @property
    def open_for_reports(self) -> bool:
        return self.state in OPEN_FOR_REPORTS

    def record(self, device_id: str, report: ParticipantReport) -> None:
        """Remember a report; signal when the target number is reached."""
        self.reports[device_id] = report
        self.uplink_bytes += report.uplink_bytes
        if len(self.reports) >= self.target:
            self.enough.set()

    def dropped(self) -> set[str]:
        return self.selected - set(self.reports)

    def counts(self) -> dict[str, int]:
        """The round's participation and byte counts, as the store keeps them."""
        return {
            "reported": len(self.reports),
            "dropped": len(self.dropped()),
            "refused": self.refused,
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
        }

    def weighted_metric(self, name: str) -> float | None:
        total = sum(r.examples for r in self.reports.values())
        if total == 0:
            return None
        weighted: float = sum(getattr(r, name) * r.examples for r in self.reports.values())
        return weighted / total

    def snapshot(self) -> LiveRound:
        """A frozen copy for readers outside the engine (API, dashboard, metrics)."""
        return LiveRound(
            rid=self.rid,
            job_id=self.job_id,
            number=self.number,
            kind=self.kind,
            attempt=self.attempt,
            state=self.state.value,
            selected=frozenset(self.selected),
            reported=frozenset(self.reports),
            refused=self.refused,
            uplink_bytes=self.uplink_bytes,
            downlink_bytes=self.downlink_bytes,
            started=self.started_at,
            deadline=self.deadline or None,
        )
