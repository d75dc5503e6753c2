"""The task a server gives a device: blobs to fetch, the training plan, typed SecAgg and DP settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fedge.edge_client.errors import PrivacyError, ProtocolError, SecAggError
from fedge.edge_client.privacy.ddp_params import DistributedDPParams
from fedge.edge_client.protocol.body import F, Message, as_map
from fedge.edge_client.protocol.envelope import Limits
from fedge.edge_client.secagg.config import SecAggConfig


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
        body: dict[str, Any] = as_map(self)
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
