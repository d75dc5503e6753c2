"""Sparsification schemes of the exploration: what a row is, and what the server fixes per round."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scheme:
    """One row: a kind (see ``tools.bench.sparsify_explore``) and its parameters."""

    kind: str
    frac: float = 1.0
    bits: int = 0
    gamma: float = 1.0
    block: int = 1
    beta: float = 0.0
    warmup: float = 0.0
    tau: float = 3.0
    rank: int = 0
    rank2: int = 0
    oracle: int = 0
    server_lr: float = 1.0

    @property
    def label(self) -> str:
        defaults = Scheme(self.kind)
        extra = {
            k: getattr(self, k) != getattr(defaults, k)
            for k in (
                "gamma",
                "block",
                "beta",
                "warmup",
                "tau",
                "rank",
                "rank2",
                "oracle",
                "server_lr",
            )
        }
        parts = (
            [self.kind]
            if self.kind == "dense"
            else [self.kind, f"{self.frac:g}", f"q{self.bits}" if self.bits else "f32"]
        )
        parts += [f"{k}={getattr(self, k):g}" for k, on in extra.items() if on]
        return " ".join(parts)


DEFAULT_SCHEMES = (
    Scheme("dense"),
    Scheme("topk", 0.01, 4),
    Scheme("topk", 0.01, 4, gamma=0.5),
    Scheme("topk", 0.01, 4, gamma=0.0),
    Scheme("topk", 0.01),
    Scheme("topk", 0.03),
    Scheme("topk", 0.1),
    Scheme("topk", 0.3),
    Scheme("block", 0.07, 2, block=10),
    Scheme("shared", 0.1, 2),
    Scheme("submodel", 0.1, 2),
    Scheme("refit", 0.01, 4),
    Scheme("predictive", 0.01, 4, beta=1.0),
    Scheme("topk", 0.01, 4, warmup=0.1),
    Scheme("predictive", 0.01, 4, beta=1.0, warmup=0.1),
    Scheme("subspace", 0.0076, 4, rank=10, rank2=4),
    Scheme("subspace", 0.0076, 4, rank=10, rank2=4, oracle=1),
)
INT_FIELDS = ("bits", "block", "rank", "rank2", "oracle")


def parse_scheme(text: str) -> Scheme:
    """``kind[:frac[:bits[:key=value...]]]``, e.g. ``topk:0.01:4:gamma=0.5``."""
    kind, *rest = text.split(":")
    values: dict[str, Any] = {}
    for i, item in enumerate(rest):
        key, eq, value = item.partition("=")
        name = key if eq else ("frac", "bits")[i]
        values[name] = float(value if eq else key)
    for name in INT_FIELDS:
        if name in values:
            values[name] = int(values[name])
    return Scheme(kind, **values)


def round_density(scheme: Scheme, rnd: int) -> float:
    """The top-k density of round ``rnd``: ``frac``, or the warm-up decaying towards it."""
    if scheme.warmup <= scheme.frac:
        return scheme.frac
    return scheme.frac + (scheme.warmup - scheme.frac) * math.exp(-rnd / scheme.tau)


def shared_coordinates(scheme: Scheme, momentum: np.ndarray, rnd: int) -> np.ndarray | None:
    """The round's common coordinates for ``shared`` and ``submodel``, else None."""
    if scheme.kind not in ("shared", "submodel"):
        return None
    size = momentum.size
    count = int(scheme.frac * size)
    rng = np.random.default_rng(1000 + rnd)
    top = np.zeros(0, dtype=np.int64)
    if scheme.kind == "shared" and rnd:
        top = np.argsort(-np.abs(momentum))[: count // 2]
    rest = np.setdiff1d(np.arange(size), top)
    return np.sort(np.concatenate([top, rng.choice(rest, count - len(top), replace=False)]))


def kernel_ranks(scheme: Scheme, shapes: tuple[tuple[int, ...], ...]) -> dict[int, int]:
    """Tensor index -> rank for ``subspace`` and ``lowrank`` (see
    ``tools.bench.sparsify_explore``), else empty."""
    if scheme.kind not in ("subspace", "lowrank"):
        return {}
    kernels = [i for i, shape in enumerate(shapes) if len(shape) >= 2]
    ranks = {kernels[-1]: scheme.rank}
    for i in kernels[:-1]:
        if scheme.rank2 and math.prod(shapes[i][:-1]) >= 4 * scheme.rank2:
            ranks[i] = scheme.rank2
    return ranks
