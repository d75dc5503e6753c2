"""The round state machine: explicit states, a transition table, and per-round bookkeeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedge.server.aggregator import StreamingMean


class RoundState(StrEnum):
    """States of one round; every transition is persisted."""

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


class IllegalTransition(RuntimeError):
    """A transition that the table does not allow (a bug, never bad input)."""


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
    """In-memory state of the round in progress (its durable twin lives in SQLite)."""

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
    within_clip: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    aggregator: StreamingMean | None = None
    secure: Any = None  # server.secure_round.SecureRound in secure mode
    secure_metrics: dict[str, Any] = field(default_factory=dict)
    target: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def advance(self, new_state: RoundState) -> None:
        """Move to ``new_state`` if the table allows it."""
        if new_state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"round {self.number}: {self.state.value} -> {new_state.value}")
        self.state = new_state

    @property
    def open_for_reports(self) -> bool:
        return self.state == RoundState.COLLECTING

    def record(self, device_id: str, report: ParticipantReport) -> None:
        """Remember a report; signal when the target number is reached."""
        self.reports[device_id] = report
        self.uplink_bytes += report.uplink_bytes
        if len(self.reports) >= self.target:
            self.enough.set()

    def dropped(self) -> set[str]:
        return self.selected - set(self.reports)

    def weighted_metric(self, name: str) -> float | None:
        total = sum(r.examples for r in self.reports.values())
        if total == 0:
            return None
        return sum(getattr(r, name) * r.examples for r in self.reports.values()) / total
