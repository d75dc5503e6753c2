"""What devices report: a training update (a positional body: it is sent most) and evaluation results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol.body import F, Message
from fedge.edge_client.protocol.envelope import Limits


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
