"""Response schemas of the management API, built from store rows and the live round snapshot."""

from __future__ import annotations

import json
import time
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from fedge.server.control import LiveRound
from fedge.server.rounds import RoundState

T = TypeVar("T")

LIVE_STATES = frozenset(
    s.value for s in (RoundState.SELECTING, RoundState.CONFIGURING, RoundState.COLLECTING)
)
DEVICE_STATUSES = ("offline", "idle", "selected", "reported")


class ErrorBody(BaseModel):
    """Every error the API returns."""

    error: str = Field(examples=["no job 'digits-7'"])


class Page(BaseModel, Generic[T]):
    """One page of a list, with the total matching the filters."""

    total: int
    limit: int
    offset: int
    items: list[T]


class DeviceOut(BaseModel):
    """A device as the server last saw it; ``status`` relates it to the round in progress."""

    id: str
    fleet: str
    profile: str | None
    runtime: str | None
    online: bool
    status: str = Field(description="offline, idle, selected (in the current round) or reported")
    first_seen: float
    last_seen: float
    eligibility: dict[str, Any] | None
    identity_key: str | None = Field(description="Ed25519 public key, hex")
    rounds_reported: int
    rounds_dropped: int
    rejected_messages: int

    @classmethod
    def from_row(cls, row: dict[str, Any], current: LiveRound | None) -> DeviceOut:
        key = row.get("identity_key")
        return cls(
            id=row["id"],
            fleet=row["fleet"],
            profile=row["profile"],
            runtime=row["runtime"],
            online=bool(row["online"]),
            status=device_status(row["id"], bool(row["online"]), current),
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            eligibility=json.loads(row["eligibility"]) if row["eligibility"] else None,
            identity_key=bytes(key).hex() if key else None,
            rounds_reported=row["rounds_reported"],
            rounds_dropped=row["rounds_dropped"],
            rejected_messages=row["rejected_messages"],
        )


class DeviceRound(BaseModel):
    """One round a device took part in."""

    rid: int
    job_id: str
    round: int
    attempt: int
    kind: str
    round_state: str
    status: str = Field(description="selected, reported or dropped")
    examples: int | None
    loss: float | None
    accuracy: float | None
    train_time_s: float | None
    uplink_bytes: int | None
    downlink_bytes: int | None
    reason: str | None
    updated: float | None


class DeviceDetail(DeviceOut):
    """A device and its most recent rounds (newest first)."""

    history: list[DeviceRound]


class ProfileCount(BaseModel):
    total: int
    online: int


class CurrentRound(BaseModel):
    """The round the coordinator is running now."""

    rid: int
    number: int
    kind: str
    attempt: int
    state: str
    selected: int
    reported: int
    refused: int
    started: float
    deadline: float | None

    @classmethod
    def from_live(cls, live: LiveRound) -> CurrentRound:
        return cls(
            rid=live.rid,
            number=live.number,
            kind=live.kind,
            attempt=live.attempt,
            state=live.state,
            selected=len(live.selected),
            reported=len(live.reported),
            refused=live.refused,
            started=live.started,
            deadline=live.deadline or None,
        )


class ActiveJob(BaseModel):
    id: str
    status: str
    rounds_total: int
    rounds_committed: int
    current_round: CurrentRound | None


class FleetOverview(BaseModel):
    """Devices by profile and status, and what the server is doing."""

    devices_total: int
    devices_online: int
    by_profile: dict[str, ProfileCount]
    by_status: dict[str, int]
    job: ActiveJob | None


class JobOut(BaseModel):
    """A job as stored; ``status`` is ``paused`` while an operator holds it."""

    id: str
    fleet: str | None
    status: str
    active: bool
    created: float
    updated: float
    rounds_total: int | None
    committed_round: int
    weights_sha: str | None
    reason: str | None


class RoundOut(BaseModel):
    """One attempt of a training or evaluation round (live counts while it runs)."""

    rid: int
    job_id: str
    round: int
    attempt: int
    kind: str
    state: str
    started: float
    ended: float | None
    duration_s: float | None
    selected: int
    reported: int
    dropped: int
    refused: int
    uplink_bytes: int
    downlink_bytes: int
    train_loss: float | None
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    fed_eval_loss: float | None
    fed_eval_accuracy: float | None
    epsilon: float | None
    dp_clip: float | None = None
    aggregation_s: float | None
    slowest_train_s: float | None
    weights_sha: str | None
    reason: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any], current: LiveRound | None) -> RoundOut:
        data = {k: row[k] for k in cls.model_fields if k in row}
        for key in ("selected", "reported", "dropped", "refused", "uplink_bytes", "downlink_bytes"):
            data[key] = data.get(key) or 0
        if current is not None and current.rid == row["rid"] and current.state in LIVE_STATES:
            data.update(
                selected=len(current.selected),
                reported=len(current.reported),
                dropped=0,
                refused=current.refused,
                uplink_bytes=current.uplink_bytes,
                downlink_bytes=current.downlink_bytes,
            )
        end = row["ended"] if row["ended"] is not None else time.time()
        return cls(duration_s=end - row["started"], **data)


class JobDetail(JobOut):
    """A job with its configuration, its rounds by state and its latest round."""

    config: dict[str, Any]
    rounds_by_state: dict[str, int]
    last_round: RoundOut | None


class Participant(BaseModel):
    device_id: str
    status: str
    examples: int | None
    loss: float | None
    accuracy: float | None
    train_time_s: float | None
    uplink_bytes: int | None
    downlink_bytes: int | None
    reason: str | None
    updated: float | None


class Transition(BaseModel):
    """A state the round entered, and how long it stayed (None while it still is there)."""

    state: str
    at: float
    seconds: float | None
    reason: str | None


class RoundDetail(RoundOut):
    """A round with its participants, the devices that dropped out and its timings."""

    participants: list[Participant]
    dropouts: list[str]
    timings: list[Transition]


def device_status(device_id: str, online: bool, current: LiveRound | None) -> str:
    """Where a device stands: offline, idle, selected (in the live round) or reported."""
    if current is not None and current.state in LIVE_STATES and device_id in current.selected:
        return "reported" if device_id in current.reported else "selected"
    return "idle" if online else "offline"


def timings(rows: list[dict[str, Any]], terminal: bool) -> list[Transition]:
    """Transitions with the time spent in each state (the last one open unless terminal)."""
    out = []
    for i, row in enumerate(rows):
        nxt = rows[i + 1]["at"] if i + 1 < len(rows) else None
        seconds = nxt - row["at"] if nxt is not None else (0.0 if terminal else None)
        out.append(
            Transition(state=row["state"], at=row["at"], seconds=seconds, reason=row["reason"])
        )
    return out
