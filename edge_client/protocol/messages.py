"""Typed message bodies of the fedge wire protocol and their validation."""

from __future__ import annotations

import math
import re
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np

from fedge.edge_client.errors import PrivacyError, ProtocolError, SecAggError
from fedge.edge_client.privacy.ddp_params import DistributedDPParams
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, Envelope, Limits
from fedge.edge_client.secagg.config import SecAggConfig

ALLOWED_DTYPES = {"float32", "float16", "int32", "uint32", "int8", "uint8", "int64"}
SHA256_BYTES = 32
_LOWER_HEX = re.compile(r"[0-9a-f]*")
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def as_map(value: Any) -> Any:
    """A dataclass as nested dicts of its fields (as `dataclasses.asdict`, without copying
    the leaves: a body is packed once and never changed)."""
    if is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
        return {name: as_map(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):
        return [as_map(v) for v in value]
    if isinstance(value, dict):
        return {k: as_map(v) for k, v in value.items()}
    return value


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """Tensor as raw little-endian bytes with its dtype and shape (0-d tensors keep shape [])."""
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype {arr.dtype} cannot travel on the wire")
    return {
        "dtype": arr.dtype.name,
        "shape": list(arr.shape),
        "data": arr.astype(arr.dtype.newbyteorder("<")).tobytes(),
    }


def decode_tensor(obj: Any, limits: Limits = DEFAULT_LIMITS, name: str = "tensor") -> np.ndarray:
    """Validate and rebuild a tensor encoded by `encode_tensor`."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{name}: expected a tensor map")
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{name}: dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or len(shape) > 8:
        raise ProtocolError(f"{name}: shape must be a list of at most 8 dims")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{name}: shape dims must be non-negative ints")
    for d in shape:  # bound each dim too: a zero elsewhere must not hide a huge one
        if d > limits.max_tensor_elements:
            raise ProtocolError(
                f"{name}: shape dim {d}: {d} elements exceed the limit {limits.max_tensor_elements}"
            )
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise ProtocolError(
            f"{name}: {count} elements exceed the limit {limits.max_tensor_elements}"
        )
    if not isinstance(data, bytes):
        raise ProtocolError(f"{name}: data must be bytes")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if len(data) != count * np_dtype.itemsize:
        raise ProtocolError(f"{name}: {len(data)} bytes do not match shape {shape} of {dtype}")
    arr = np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(np.dtype(dtype))
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(f"{name}: contains NaN or infinity")
    return arr


_ACTIVE_LIMITS: ContextVar[Limits] = ContextVar("fedge_protocol_limits", default=DEFAULT_LIMITS)


class _Field:
    """Validation helpers used by message `from_body` methods."""

    @staticmethod
    def get(
        body: dict[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        *,
        optional: bool = False,
        default: Any = None,
    ) -> Any:
        if key not in body or body[key] is None:
            if optional:
                return default
            raise ProtocolError(f"missing field {key!r}")
        value = body[key]
        if (
            isinstance(value, bool)
            and kind is not bool
            and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            raise ProtocolError(f"field {key!r} must not be a bool")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise ProtocolError(f"field {key!r} has type {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"field {key!r} is not finite")
        if isinstance(value, str) and len(value) > _ACTIVE_LIMITS.get().max_string_len:
            raise ProtocolError(f"field {key!r} is too long")
        return value

    @staticmethod
    def in_range(key: str, value: float, lo: float, hi: float) -> float:
        if not lo <= value <= hi:
            raise ProtocolError(f"field {key!r}={value} outside [{lo}, {hi}]")
        return value

    @staticmethod
    def known(body: dict[str, Any], cls: type) -> None:
        """Refuse a map body with a key that is not a field of the dataclass ``cls``."""
        names = {f.name for f in fields(cls)}
        for key in body:
            if key not in names:
                raise ProtocolError(f"unknown field {key!r:.40}")

    @staticmethod
    def positional(body: list[Any], names: tuple[str, ...], required: int) -> dict[str, Any]:
        """Name the elements of an array body; those after the first ``required`` are optional."""
        if not required <= len(body) <= len(names):
            raise ProtocolError(
                f"body has {len(body)} fields, expected {required} to {len(names)}: {names}"
            )
        return dict(zip(names, body, strict=False))

    @staticmethod
    def hex_digest(key: str, value: str, size: int = SHA256_BYTES) -> str:
        """``value`` if it is ``size`` bytes in lowercase hex (by default a whole sha256)."""
        if len(value) != 2 * size or not _LOWER_HEX.fullmatch(value):
            what = " (a sha256)" if size == SHA256_BYTES else ""
            raise ProtocolError(f"field {key!r} must be {2 * size} lowercase hex characters{what}")
        return value


F = _Field


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
class Message:
    """Base of all message bodies; subclasses set TYPE."""

    TYPE: ClassVar[str] = ""
    WIRE_BODY: ClassVar[type] = dict  # a map keyed by field name, or a positional list

    def to_body(self) -> dict[str, Any] | list[Any]:
        return as_map(self)

    @classmethod
    def from_body(cls, body: Any, limits: Limits) -> Message:
        raise NotImplementedError


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


@dataclass(frozen=True)
class BlobRef:
    """A content-addressed, signed file the device downloads over HTTP."""

    sha256: str
    url: str
    signature: bytes
    size: int

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> BlobRef:
        F.known(body, cls)
        sha = F.hex_digest("sha256", F.get(body, "sha256", str))
        url = F.get(body, "url", str)
        if not url.startswith(("http://", "https://")):
            raise ProtocolError(f"blob url must be http(s): {url!r}")
        sig = F.get(body, "signature", bytes)
        if len(sig) != 64:
            raise ProtocolError("signature must be 64 bytes (Ed25519)")
        size = int(F.in_range("size", F.get(body, "size", int), 0, 1 << 40))
        return cls(sha256=sha, url=url, signature=sig, size=size)


@dataclass(frozen=True)
class TrainingPlan:
    """How the device trains in this round."""

    epochs: int
    lr: float
    max_steps: int | None = None
    shuffle: bool = True

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TrainingPlan:
        F.known(body, cls)
        max_steps = F.get(body, "max_steps", int, optional=True)
        return cls(
            epochs=int(F.in_range("epochs", F.get(body, "epochs", int), 0, 1000)),
            lr=F.in_range("lr", F.get(body, "lr", float), 0.0, 100.0),
            max_steps=None
            if max_steps is None
            else int(F.in_range("max_steps", max_steps, 1, 10**9)),
            shuffle=F.get(body, "shuffle", bool, optional=True, default=True),
        )


MAX_STAGE_TIMEOUT_S = 3600.0  # the longest a secure-aggregation stage may wait for replies
MAX_RING_BITS = 24  # quantization bits of a secure update (the ring is 32 bits wide)
MAX_COHORT = 100_000  # the most devices one secure round may hold


@dataclass(frozen=True)
class SecAggTask:
    """How a device takes part in a round's secure aggregation (protocol 6: typed, checked).

    ``round_id`` names the SecAgg+ instance; ``config`` its parameters; ``clip``, ``bits``
    and ``n_max`` size the ring codec; ``max_weight`` caps the example weight a device adds
    in the last ring element; ``stage_timeout_s`` is how long each stage waits.
    """

    round_id: str
    config: SecAggConfig
    clip: float
    bits: int
    n_max: int
    max_weight: int
    stage_timeout_s: float

    def to_body(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "config": self.config.to_wire(),
            "clip": self.clip,
            "bits": self.bits,
            "n_max": self.n_max,
            "max_weight": self.max_weight,
            "stage_timeout_s": self.stage_timeout_s,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SecAggTask:
        F.known(body, cls)
        try:
            config = SecAggConfig.from_wire(F.get(body, "config", dict))
        except SecAggError as exc:
            raise ProtocolError(f"secagg.config: {exc}") from exc
        clip = F.get(body, "clip", float)
        if clip <= 0:
            raise ProtocolError(f"field 'clip'={clip} must be positive")
        return cls(
            round_id=F.get(body, "round_id", str),
            config=config,
            clip=clip,
            bits=int(F.in_range("bits", F.get(body, "bits", int), 1, MAX_RING_BITS)),
            n_max=int(F.in_range("n_max", F.get(body, "n_max", int), 1, MAX_COHORT)),
            max_weight=int(F.in_range("max_weight", F.get(body, "max_weight", int), 1, 1 << 31)),
            stage_timeout_s=F.in_range(
                "stage_timeout_s", F.get(body, "stage_timeout_s", float), 1e-3, MAX_STAGE_TIMEOUT_S
            ),
        )


DP_MODES = ("central", "distributed")


@dataclass(frozen=True)
class DPTask:
    """How a device bounds (and, in distributed mode, noises) its update (protocol 6: typed).

    ``clip`` is the L2 norm a device clips its update to; ``params`` (distributed mode only)
    are the exact distributed-DP parameters: scale, ring bits, noise per device.
    """

    mode: str
    clip: float
    params: DistributedDPParams | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": self.mode, "clip": self.clip}
        if self.params is not None:
            body["params"] = self.params.to_dict()
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DPTask:
        F.known(body, cls)
        mode = F.get(body, "mode", str)
        if mode not in DP_MODES:
            raise ProtocolError(f"field 'mode' must be one of {DP_MODES}, got {mode!r:.40}")
        clip = F.get(body, "clip", float)
        if clip <= 0:
            raise ProtocolError(f"field 'clip'={clip} must be positive")
        raw = F.get(body, "params", dict, optional=True)
        if (raw is None) != (mode == "central"):
            raise ProtocolError("distributed DP tasks carry 'params', central ones do not")
        try:
            params = DistributedDPParams.from_dict(raw) if raw is not None else None
        except PrivacyError as exc:
            raise ProtocolError(f"dp.params: {exc}") from exc
        return cls(mode=mode, clip=clip, params=params)


@dataclass(frozen=True)
class Task(Message):
    """Server -> device: train (or evaluate) this model in this round."""

    TYPE: ClassVar[str] = "task"
    kind: str
    model: BlobRef
    manifest: BlobRef
    weights: BlobRef
    plan: TrainingPlan
    codec: str
    deadline: float
    round_seed: int
    secagg: SecAggTask | None = None
    dp: DPTask | None = None
    weights_delta: BlobRef | None = None
    delta_base: str | None = None

    def to_body(self) -> dict[str, Any]:
        body = as_map(self)
        body["secagg"] = self.secagg.to_body() if self.secagg is not None else None
        body["dp"] = self.dp.to_body() if self.dp is not None else None
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> Task:
        F.known(body, cls)
        delta = F.get(body, "weights_delta", dict, optional=True)
        base = F.get(body, "delta_base", str, optional=True)
        if (delta is None) != (base is None):
            raise ProtocolError("weights_delta and delta_base come together")
        kind = F.get(body, "kind", str)
        if kind not in ("train", "evaluate"):
            raise ProtocolError(f"task kind must be train or evaluate, got {kind!r}")
        secagg = F.get(body, "secagg", dict, optional=True)
        dp = F.get(body, "dp", dict, optional=True)
        return cls(
            kind=kind,
            model=BlobRef.from_body(F.get(body, "model", dict)),
            manifest=BlobRef.from_body(F.get(body, "manifest", dict)),
            weights=BlobRef.from_body(F.get(body, "weights", dict)),
            plan=TrainingPlan.from_body(F.get(body, "plan", dict)),
            codec=F.get(body, "codec", str),
            deadline=F.get(body, "deadline", float),
            round_seed=int(F.in_range("round_seed", F.get(body, "round_seed", int), 0, 2**63 - 1)),
            secagg=SecAggTask.from_body(secagg) if secagg is not None else None,
            dp=DPTask.from_body(dp) if dp is not None else None,
            weights_delta=BlobRef.from_body(delta) if delta is not None else None,
            delta_base=base,
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
class TrainMetrics:
    """What local training measured."""

    loss: float
    accuracy: float
    examples: int
    train_time_s: float

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TrainMetrics:
        F.known(body, cls)
        return cls(
            loss=F.in_range("loss", F.get(body, "loss", float), 0.0, 1e9),
            accuracy=F.in_range("accuracy", F.get(body, "accuracy", float), 0.0, 1.0),
            examples=int(F.in_range("examples", F.get(body, "examples", int), 0, 1 << 40)),
            train_time_s=F.in_range("train_time_s", F.get(body, "train_time_s", float), 0.0, 1e7),
        )


UPDATE_FIELDS = ("payload", "base_weights", "metrics", "examples", "within_clip")
BASE_DIGEST_BYTES = 8  # an update names its base weights by this prefix of their sha256
METRICS_DTYPE = np.dtype("<f2")  # update metrics on the wire: loss, accuracy, train_time_s
METRICS_BYTES = 3 * METRICS_DTYPE.itemsize
METRICS_MAX = float(np.finfo(METRICS_DTYPE).max)  # finite metrics saturate here (65504)


def base_digest(sha256_hex: str) -> str:
    """The hex prefix of a weights digest that an `Update` carries as ``base_weights``."""
    return F.hex_digest("base_weights", sha256_hex)[: 2 * BASE_DIGEST_BYTES]


@dataclass(frozen=True)
class Update(Message):
    """Device -> server: the encoded model update of a training task.

    Sent by every device every round, so its body is a positional array (`UPDATE_FIELDS`):
    ``base_weights`` as the first 8 raw bytes of the sha256 of the weights trained on (hex in
    the attribute, see `base_digest`), ``metrics`` as float16 loss, accuracy and train time
    (finite values saturate at `METRICS_MAX`), then ``examples``, then ``within_clip`` only
    when it is set. The codec spec does not travel: the job fixes it and the payload's
    fingerprint binds it.
    """

    TYPE: ClassVar[str] = "update"
    WIRE_BODY: ClassVar[type] = list
    payload: bytes
    base_weights: str
    metrics: TrainMetrics
    within_clip: bool | None = None

    def to_body(self) -> list[Any]:
        """The positional body; ProtocolError if ``base_weights`` is not a `base_digest`."""
        digest = bytes.fromhex(F.hex_digest("base_weights", self.base_weights, BASE_DIGEST_BYTES))
        values = np.array(
            [self.metrics.loss, self.metrics.accuracy, self.metrics.train_time_s], np.float64
        )
        # Saturate what is finite; NaN and infinity travel as such, and the receiver refuses them.
        finite = np.isfinite(values)
        values[finite] = np.clip(values[finite], -METRICS_MAX, METRICS_MAX)
        metrics = values.astype(METRICS_DTYPE).tobytes()
        body = [self.payload, digest, metrics, self.metrics.examples]
        return body if self.within_clip is None else [*body, self.within_clip]

    @classmethod
    def from_body(cls, body: list[Any], limits: Limits) -> Update:
        named = F.positional(body, UPDATE_FIELDS, required=len(UPDATE_FIELDS) - 1)
        payload = F.get(named, "payload", bytes)
        digest = F.get(named, "base_weights", bytes)
        if len(digest) != BASE_DIGEST_BYTES:
            raise ProtocolError(
                f"field 'base_weights' must be {BASE_DIGEST_BYTES} bytes (a sha256 prefix)"
            )
        metrics = F.get(named, "metrics", bytes)
        if len(metrics) != METRICS_BYTES:
            raise ProtocolError(
                f"field 'metrics' must be {METRICS_BYTES} bytes: float16 loss, accuracy, "
                "train_time_s"
            )
        loss, accuracy, train_time_s = np.frombuffer(metrics, METRICS_DTYPE).tolist()
        return cls(
            payload=payload,
            base_weights=digest.hex(),
            metrics=TrainMetrics.from_body(
                {
                    "loss": loss,
                    "accuracy": accuracy,
                    "examples": named.get("examples"),
                    "train_time_s": train_time_s,
                }
            ),
            within_clip=F.get(named, "within_clip", bool, optional=True),
        )


@dataclass(frozen=True)
class EvalResult(Message):
    """Device -> server: metrics of an evaluation task on the local test split."""

    TYPE: ClassVar[str] = "eval_result"
    loss: float
    accuracy: float
    examples: int

    @classmethod
    def from_body(cls, body: dict[str, Any], limits: Limits) -> EvalResult:
        F.known(body, cls)
        return cls(
            loss=F.in_range("loss", F.get(body, "loss", float), 0.0, 1e9),
            accuracy=F.in_range("accuracy", F.get(body, "accuracy", float), 0.0, 1.0),
            examples=int(F.in_range("examples", F.get(body, "examples", int), 0, 1 << 40)),
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
        body = as_map(self)
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
