"""Typed message bodies of the fedge wire protocol, their registry, and parse/make.

The larger parts live beside this module (`body`: the base class and field checks; `task`:
the task and its sub-messages; `reports`: updates and evaluation results); everything is
re-exported here, so ``messages.X`` names every message type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol.body import (
    _ACTIVE_LIMITS,
    ALLOWED_DTYPES,
    SHA256_BYTES,
    F,
    Message,
    as_map,
    decode_tensor,
    encode_tensor,
)
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, Envelope, Limits
from fedge.edge_client.protocol.reports import (
    BASE_DIGEST_BYTES,
    METRICS_BYTES,
    METRICS_DTYPE,
    METRICS_MAX,
    UPDATE_FIELDS,
    EvalResult,
    TrainMetrics,
    Update,
    base_digest,
)
from fedge.edge_client.protocol.task import (
    DP_MODES,
    MAX_COHORT,
    MAX_RING_BITS,
    MAX_STAGE_TIMEOUT_S,
    BlobRef,
    DPTask,
    SecAggTask,
    Task,
    TrainingPlan,
)

__all__ = [
    "ALLOWED_DTYPES",
    "BASE_DIGEST_BYTES",
    "METRICS_BYTES",
    "METRICS_DTYPE",
    "METRICS_MAX",
    "UPDATE_FIELDS",
    "DEFAULT_LIMITS",
    "DP_MODES",
    "MAX_COHORT",
    "MAX_RING_BITS",
    "MAX_STAGE_TIMEOUT_S",
    "SHA256_BYTES",
    "Ack",
    "BlobRef",
    "CheckIn",
    "DPTask",
    "Eligibility",
    "ErrorReport",
    "EvalResult",
    "F",
    "JobState",
    "Message",
    "Presence",
    "RetryLater",
    "RoundOpen",
    "SecAggStage",
    "SecAggTask",
    "Task",
    "TrainMetrics",
    "TrainingPlan",
    "Update",
    "as_map",
    "base_digest",
    "decode_tensor",
    "encode_tensor",
    "make",
    "parse",
]


@dataclass(frozen=True)
class Eligibility:
    """What a device tells the server about its current state."""

    charging: bool = True
    unmetered: bool = True
    idle: bool = True
    battery: float = 1.0
    free_memory_mb: int = 1024

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Eligibility:
        F.known(body, cls)
        return cls(
            charging=F.get(body, "charging", bool),
            unmetered=F.get(body, "unmetered", bool),
            idle=F.get(body, "idle", bool),
            battery=F.in_range("battery", F.get(body, "battery", float), 0.0, 1.0),
            free_memory_mb=int(
                F.in_range("free_memory_mb", F.get(body, "free_memory_mb", int), 0, 1 << 30)
            ),
        )


@dataclass(frozen=True)
class CheckIn(Message):
    """Device -> server: I am here, this is my state; give me work."""

    TYPE: ClassVar[str] = "checkin"
    eligibility: Eligibility
    runtime: str
    runtime_version: str
    examples: int
    cached_artifacts: list[str] = field(default_factory=list)
    profile: str | None = None
    identity_key: bytes | None = None
    identity_cert: bytes | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> CheckIn:
        F.known(body, cls)
        cached = F.get(body, "cached_artifacts", list, optional=True, default=[])
        if len(cached) > 64 or not all(isinstance(c, str) and len(c) == 64 for c in cached):
            raise ProtocolError("cached_artifacts must be at most 64 sha256 hex digests")
        return cls(
            eligibility=Eligibility.from_body(F.get(body, "eligibility", dict)),
            runtime=F.get(body, "runtime", str),
            runtime_version=F.get(body, "runtime_version", str),
            examples=int(F.in_range("examples", F.get(body, "examples", int), 0, 1 << 40)),
            cached_artifacts=cached,
            profile=F.get(body, "profile", str, optional=True),
            identity_key=F.get(body, "identity_key", bytes, optional=True),
            identity_cert=F.get(body, "identity_cert", bytes, optional=True),
        )


MAX_RETRY_S = 7 * 86400  # the longest check-in window a device accepts


@dataclass(frozen=True)
class RetryLater(Message):
    """Server -> device: not now; check in again after the window (pace steering)."""

    TYPE: ClassVar[str] = "retry"
    reason: str
    retry_after_s: float

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> RetryLater:
        F.known(body, cls)
        return cls(
            reason=F.get(body, "reason", str),
            retry_after_s=F.in_range(
                "retry_after_s", F.get(body, "retry_after_s", float), 0, MAX_RETRY_S
            ),
        )


@dataclass(frozen=True)
class Ack(Message):
    """Server -> device: the update or result was accepted or refused (with the reason).

    The ack that ends a task also carries ``retry_after_s``, the device's next check-in
    window (as `RetryLater` would give it), so that a device done with its round does not check
    in at once only to be told to wait (protocol 4).
    """

    TYPE: ClassVar[str] = "ack"
    accepted: bool
    reason: str = ""
    retry_after_s: float | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = as_map(self)
        if self.retry_after_s is None:
            del body["retry_after_s"]
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> Ack:
        F.known(body, cls)
        window = F.get(body, "retry_after_s", float, optional=True)
        return cls(
            accepted=F.get(body, "accepted", bool),
            reason=F.get(body, "reason", str),
            retry_after_s=None
            if window is None
            else F.in_range("retry_after_s", window, 0, MAX_RETRY_S),
        )


@dataclass(frozen=True)
class ErrorReport(Message):
    """Either direction: something went wrong on the sender's side."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> ErrorReport:
        F.known(body, cls)
        return cls(code=F.get(body, "code", str), message=F.get(body, "message", str))


@dataclass(frozen=True)
class SecAggStage(Message):
    """Either direction: one secure-aggregation stage message (payload owned by secagg)."""

    TYPE: ClassVar[str] = "secagg"
    stage: str
    data: dict[str, Any]

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> SecAggStage:
        F.known(body, cls)
        return cls(stage=F.get(body, "stage", str), data=F.get(body, "data", dict))


@dataclass(frozen=True)
class Presence(Message):
    """Retained on the presence topic; the last will publishes online=False."""

    TYPE: ClassVar[str] = "presence"
    online: bool
    profile: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> Presence:
        F.known(body, cls)
        return cls(
            online=F.get(body, "online", bool), profile=F.get(body, "profile", str, optional=True)
        )


@dataclass(frozen=True)
class JobState(Message):
    """Server -> all devices (broadcast): a job changed state."""

    TYPE: ClassVar[str] = "job_state"
    state: str

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> JobState:
        F.known(body, cls)
        return cls(state=F.get(body, "state", str))


@dataclass(frozen=True)
class RoundOpen(Message):
    """Server -> all devices (broadcast): selection for a round is open.

    A waiting device checks in early with ``wake_probability`` (pace steering: the server
    sets it so that about the number of devices it needs wake up, not the whole fleet).
    """

    TYPE: ClassVar[str] = "round_open"
    round: int
    wake_probability: float

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> RoundOpen:
        F.known(body, cls)
        return cls(
            round=int(F.in_range("round", F.get(body, "round", int), 0, 1 << 40)),
            wake_probability=F.in_range(
                "wake_probability", F.get(body, "wake_probability", float), 0.0, 1.0
            ),
        )


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.TYPE: m
    for m in (
        CheckIn,
        Task,
        RetryLater,
        Update,
        EvalResult,
        Ack,
        ErrorReport,
        SecAggStage,
        Presence,
        JobState,
        RoundOpen,
    )
}

DEVICE_TO_SERVER = {CheckIn.TYPE, Update.TYPE, EvalResult.TYPE, ErrorReport.TYPE, SecAggStage.TYPE}


def parse(envelope: Envelope, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate the body of ``envelope`` and return the typed message."""
    cls = MESSAGE_TYPES.get(envelope.type)
    if cls is None:
        raise ProtocolError(f"unknown message type {envelope.type!r}")
    token = _ACTIVE_LIMITS.set(limits)
    try:
        if not isinstance(envelope.body, cls.WIRE_BODY):
            kind = "an array" if cls.WIRE_BODY is list else "a map"
            raise ProtocolError(f"field 'body' must be {kind}")
        return cls.from_body(envelope.body, limits)
    except ProtocolError as exc:
        raise ProtocolError(f"{envelope.type}: {exc}") from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(f"{envelope.type}: malformed body: {exc}") from exc
    finally:
        _ACTIVE_LIMITS.reset(token)


def make(message: Message, *, job_id: str | None = None, round_id: int | None = None) -> Envelope:
    """Wrap a typed message into an envelope ready to `pack()`."""
    return Envelope(type=message.TYPE, body=message.to_body(), job_id=job_id, round_id=round_id)
