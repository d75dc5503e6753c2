"""The round engine: every round transition is checked against the table and persisted here.

Nothing else moves a round's state. Each method changes the store first (one transaction,
which checks the transition against the table too) and the in-memory `RoundRun` after, so
memory never runs ahead of what a restarted server would find.
"""

from __future__ import annotations

import logging
from typing import Any

from fedge.server.rounds import ParticipantReport, RoundRun, RoundState, check_transition
from fedge.server.selection import round_seed
from fedge.server.store import Store

log = logging.getLogger("fedge.server")


class RoundEngine:
    """Starts rounds, moves them through their states and records who took part."""

    def __init__(self, store: Store, job_id: str, seed: int):
        self.store = store
        self.job_id = job_id
        self.seed = seed  # the job's seed, from which every round attempt's seed derives

    def recover(self) -> None:
        """Fail the rounds a crash left open (a restarted server never resumes a round)."""
        failed = self.store.fail_unfinished_rounds(self.job_id, "server restarted mid-round")
        if failed:
            log.warning(
                "job %s: %d unfinished round(s) marked failed after a restart", self.job_id, failed
            )

    def start(self, number: int, kind: str) -> RoundRun:
        """A new attempt of round ``number``, persisted in SELECTING."""
        attempt = self.store.attempts(self.job_id, kind, number) + 1
        rid = self.store.start_round(self.job_id, number, attempt, kind, RoundState.SELECTING.value)
        return RoundRun(
            rid=rid,
            job_id=self.job_id,
            number=number,
            attempt=attempt,
            kind=kind,
            round_seed=round_seed(self.seed, self.job_id, number, attempt),
        )

    def advance(
        self, rnd: RoundRun, state: RoundState, *, reason: str | None = None, **fields: Any
    ) -> None:
        """Move ``rnd`` to ``state`` (IllegalTransition if the table forbids it)."""
        check_transition(rnd.state, state, f"round {rnd.number}")
        self.store.transition(rnd.rid, state.value, reason=reason, **fields)
        rnd.advance(state)

    def configure(self, rnd: RoundRun, chosen: list[str], deadline: float) -> None:
        """Selection closed: the chosen devices become the round's participants (CONFIGURING)."""
        check_transition(rnd.state, RoundState.CONFIGURING, f"round {rnd.number}")
        self.store.set_participants(rnd.rid, chosen)
        self.advance(rnd, RoundState.CONFIGURING, selected=len(chosen))
        rnd.selected = set(chosen)
        rnd.target = min(rnd.target, len(chosen))  # fewer came: do not wait for the deadline
        rnd.deadline = deadline

    def record_report(self, rnd: RoundRun, device_id: str, report: ParticipantReport) -> None:
        """Count a device's report in the round and persist it as its participation."""
        rnd.record(device_id, report)
        self.store.set_participant(
            rnd.rid,
            device_id,
            "reported",
            examples=report.examples,
            loss=report.loss,
            accuracy=report.accuracy,
            train_time_s=report.train_time_s,
            uplink_bytes=report.uplink_bytes,
        )

    def close_collection(self, rnd: RoundRun) -> dict[str, int]:
        """Mark the selected devices that did not report as dropped; the round's counts."""
        for device_id in sorted(rnd.dropped()):
            self.store.set_participant(
                rnd.rid, device_id, "dropped", reason="no report by deadline"
            )
        return rnd.counts()

    def fail(self, rnd: RoundRun, reason: str, **fields: Any) -> bool:
        """Fail ``rnd`` with ``reason``; returns False (the round did not commit)."""
        self.advance(rnd, RoundState.FAILED, reason=reason, **fields)
        log.warning(
            "round %d (%s, attempt %d) failed: %s", rnd.number, rnd.kind, rnd.attempt, reason
        )
        return False

    def commit(self, rnd: RoundRun, **fields: Any) -> bool:
        """Commit a round that changes no model (federated evaluation); returns True."""
        self.advance(rnd, RoundState.COMMITTED, **fields)
        return True

    def commit_checkpoint(
        self,
        rnd: RoundRun,
        weights_sha: str,
        optimizer_sha: str | None,
        delta: tuple[str, str] | None,
        **fields: Any,
    ) -> bool:
        """Commit a training round and move the job's checkpoint to it, atomically."""
        check_transition(rnd.state, RoundState.COMMITTED, f"round {rnd.number}")
        self.store.commit_round(
            rnd.rid, self.job_id, rnd.number, weights_sha, optimizer_sha, delta=delta, **fields
        )
        rnd.advance(RoundState.COMMITTED)
        return True
