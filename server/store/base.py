"""The store's interfaces: what the web layer and the core read, and what the core writes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
"""One stored row as a plain dict keyed by column name (``jobs.config`` already parsed)."""


@dataclass(frozen=True)
class RowPage:
    """One page of rows and how many rows match the filters in all."""

    total: int
    items: list[Row]


@dataclass(frozen=True)
class RoundTotals:
    """Round attempts of one (job, kind, state) and the sums of their counters."""

    job_id: str
    kind: str
    state: str
    count: int
    reported: int
    dropped: int
    refused: int
    uplink_bytes: int
    downlink_bytes: int


@dataclass(frozen=True)
class RoundDuration:
    """Wall time of one committed round, and its server-side aggregation time if measured."""

    job_id: str
    kind: str
    seconds: float
    aggregation_s: float | None


@dataclass(frozen=True)
class ProfileDevices:
    """Devices of one profile (``unknown`` when none was reported): known and online."""

    profile: str
    known: int
    online: int


@dataclass(frozen=True)
class JobStatus:
    """A job's stored status and its last committed round."""

    job_id: str
    status: str
    committed_round: int


@dataclass(frozen=True)
class CentralEval:
    """The central evaluation after a job's latest evaluated, committed round."""

    job_id: str
    accuracy: float
    loss: float


class StoreReader(ABC):
    """Every read of stored state; the web layer sees the store only through this.

    Implementations: `fedge.server.store.SQLiteStore` (embedded); PostgreSQL later.
    """

    # devices ------------------------------------------------------------------------------
    @abstractmethod
    def devices(
        self,
        *,
        online: bool | None = None,
        profile: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> RowPage:
        """Devices matching the filters, ordered by id (``limit`` None: all of them)."""

    @abstractmethod
    def device(self, device_id: str) -> Row | None:
        """One device row, None if the server never saw it."""

    @abstractmethod
    def device_history(self, device_id: str, limit: int) -> list[Row]:
        """A device's participant rows, newest first, with ``job_id``, ``round``, ``attempt``,
        ``kind`` and ``round_state`` of their round."""

    @abstractmethod
    def device_count(self, fleet: str) -> int:
        """Devices of ``fleet`` the server knows (the population DP sampling draws from)."""

    @abstractmethod
    def device_identity(self, device_id: str) -> bytes | None:
        """A device's registered Ed25519 public key, None if unknown."""

    # jobs ---------------------------------------------------------------------------------
    @abstractmethod
    def job(self, job_id: str) -> Row | None:
        """One job row with its ``config`` parsed, None if no such job."""

    @abstractmethod
    def jobs(self, *, limit: int | None = None, offset: int = 0) -> RowPage:
        """Job rows (config parsed), newest first."""

    @abstractmethod
    def job_statuses(self) -> list[JobStatus]:
        """Every job's status and last committed round, ordered by id."""

    # rounds -------------------------------------------------------------------------------
    @abstractmethod
    def rounds(self, job_id: str, kind: str | None = None) -> list[Row]:
        """A job's round attempts (of ``kind`` if given) in the order they started."""

    @abstractmethod
    def rounds_page(
        self,
        job_id: str,
        *,
        kind: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> RowPage:
        """A job's round attempts matching the filters, in the order they started."""

    @abstractmethod
    def round_row(self, rid: int) -> Row | None:
        """One round attempt by row id, None if absent."""

    @abstractmethod
    def last_round(self, job_id: str) -> Row | None:
        """The round attempt a job started last, None before its first."""

    @abstractmethod
    def round_counts(self, job_id: str) -> dict[str, int]:
        """A job's round attempts counted by state."""

    @abstractmethod
    def attempts(self, job_id: str, kind: str, rnd: int) -> int:
        """How many attempts of round ``rnd`` of ``kind`` a job started."""

    @abstractmethod
    def participants(self, rid: int) -> list[Row]:
        """A round's participant rows, ordered by device id."""

    @abstractmethod
    def transitions(self, rid: int) -> list[Row]:
        """The states a round entered (``state``, ``at``, ``reason``), oldest first."""

    @abstractmethod
    def checkpoint_weights(self, job_id: str, rnd: int) -> str | None:
        """Digest of the weights committed by round ``rnd`` of a job, None if not committed."""

    # aggregates for /metrics --------------------------------------------------------------
    @abstractmethod
    def round_totals(self) -> list[RoundTotals]:
        """Round attempts grouped by job, kind and state, with their counters summed."""

    @abstractmethod
    def round_durations(self) -> list[RoundDuration]:
        """Durations of every committed round."""

    @abstractmethod
    def profile_devices(self) -> list[ProfileDevices]:
        """Devices known and online per profile, ordered by profile."""

    @abstractmethod
    def central_evals(self) -> list[CentralEval]:
        """Each job's central evaluation after its latest evaluated, committed round."""

    @abstractmethod
    def rejection_count(self) -> int:
        """Device messages refused, all causes, since the store was created."""


class Store(StoreReader):
    """The reads plus every write of the core; round writes obey the transition table.

    Round writes refuse what `fedge.server.rounds.TRANSITIONS` does not allow with
    `fedge.server.rounds.IllegalTransition`, checked against the stored state in the same
    transaction as the write, so no writer can move a round along an illegal edge.
    """

    @abstractmethod
    def upsert_device(
        self,
        device_id: str,
        fleet: str,
        *,
        online: bool | None = None,
        profile: str | None = None,
        runtime: str | None = None,
        eligibility: dict[str, Any] | None = None,
        identity_key: bytes | None = None,
    ) -> None:
        """Create or update a device; None leaves a field as it is."""

    @abstractmethod
    def record_rejection(self, device_id: str | None, topic: str, reason: str) -> None:
        """Remember a refused message (and count it against its device, if known)."""

    @abstractmethod
    def create_job(self, job_id: str, config: dict[str, Any]) -> None:
        """Store a new job, running, with nothing committed."""

    @abstractmethod
    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        """Change a job's status (running, finished, stopped, failed) and why."""

    @abstractmethod
    def start_round(
        self, job_id: str, rnd: int, attempt: int, kind: str, state: str = "selecting"
    ) -> int:
        """Create a round attempt in ``selecting`` (IllegalTransition otherwise); its row id."""

    @abstractmethod
    def transition(self, rid: int, state: str, *, reason: str | None = None, **fields: Any) -> None:
        """Move a round to ``state`` and update ``fields``, atomically; IllegalTransition if the
        table does not allow it from the stored state."""

    @abstractmethod
    def commit_round(
        self,
        rid: int,
        job_id: str,
        rnd: int,
        weights_sha: str,
        optimizer_sha: str | None,
        *,
        delta: tuple[str, str] | None = None,
        **fields: Any,
    ) -> None:
        """Commit an ``aggregating`` round and move the job's checkpoint to it, atomically.

        ``delta`` is (downlink-delta blob digest, digest of the weights it applies to), kept
        with the job so that a restarted server can offer the same delta again.
        """

    @abstractmethod
    def update_round(self, rid: int, **fields: Any) -> None:
        """Update a round's counters or metrics; never its state (use `transition`)."""

    @abstractmethod
    def set_participants(self, rid: int, device_ids: list[str]) -> None:
        """Record the devices selected for a round."""

    @abstractmethod
    def set_participant(self, rid: int, device_id: str, status: str, **fields: Any) -> None:
        """Update one participant (reported, dropped...) and the device's round counters."""

    @abstractmethod
    def fail_unfinished_rounds(self, job_id: str, reason: str) -> int:
        """Fail the rounds a crash left open; how many."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections."""
