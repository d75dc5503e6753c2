"""What the web layer may read from and ask of the running server, and nothing more.

The API, dashboard and metrics read stored history through the store's read interface
(`fedge.server.store.StoreReader`) and everything live through `ServerControl`: snapshots of
the running job and its round (frozen copies, never the engine's own objects) and the
operator's actions (start a job, pause, resume, stop). The core implements it; the web layer
depends only on this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedge.edge_client.arrays import Array
from fedge.edge_client.artifact import Artifact
from fedge.server.job import JobConfig


class JobNotFound(LookupError):
    """The job, its round or its weights do not exist (HTTP 404)."""


class JobConflict(RuntimeError):
    """The action does not fit the job's state, e.g. a second job while one runs (HTTP 409)."""


@dataclass(frozen=True)
class LiveRound:
    """The round in progress, as it stood when the snapshot was taken."""

    rid: int
    job_id: str
    number: int
    kind: str
    attempt: int
    state: str
    selected: frozenset[str]
    reported: frozenset[str]
    refused: int
    uplink_bytes: int
    downlink_bytes: int
    started: float
    deadline: float | None


@dataclass(frozen=True)
class ActiveJob:
    """The job this server runs now."""

    name: str
    status: str  # running, paused, finished, stopped, failed
    rounds_total: int


@dataclass(frozen=True)
class Traffic:
    """Byte and connection counters since the server started."""

    http_bytes_served: int
    mqtt_bytes_sent: int | None  # None before the broker link exists
    mqtt_bytes_received: int | None
    mqtt_connects: int | None


@dataclass(frozen=True)
class ModelSnapshot:
    """A job's model after a committed round (or before its first one)."""

    artifact: Artifact
    weights: Sequence[Array]
    description: str


class ServerControl(Protocol):
    """The live side of the server, as the web layer sees it."""

    def active_job(self) -> ActiveJob | None:
        """The job in progress (None when no job runs)."""

    def live_round(self) -> LiveRound | None:
        """The round in progress of the active job (None between rounds)."""

    def traffic(self) -> Traffic:
        """Counters of what crossed the network."""

    async def submit(self, job: JobConfig) -> None:
        """Start ``job``; JobConflict while another runs, FedgeError if it cannot start."""

    def pause(self, job_id: str) -> None:
        """Pause the job before its next round; JobConflict unless it is the active job."""

    def resume(self, job_id: str) -> None:
        """Resume a paused job; JobConflict unless it is the active job."""

    def stop(self, job_id: str) -> None:
        """Stop the job after its current step; JobConflict unless it is the active job."""

    def model(self, job_id: str, round_number: int | None) -> ModelSnapshot:
        """A job's weights after ``round_number`` (None: the latest); JobNotFound if absent."""
