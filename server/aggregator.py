"""Streaming weighted aggregation: each update is added to a running sum as it arrives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_client.errors import CodecError


class StreamingMean:
    """Weighted running sum of deltas; memory is one model, whatever the number of devices."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], max_weight: float):
        self._sums = [np.zeros(s, np.float64) for s in shapes]
        self._max_weight = float(max_weight)
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Sequence[np.ndarray], examples: int) -> float:
        """Add one device's delta weighted by its (capped) example count; returns the weight."""
        if len(delta) != len(self._sums):
            raise CodecError(f"update has {len(delta)} tensors, expected {len(self._sums)}")
        for d, s in zip(delta, self._sums, strict=True):
            if d.shape != s.shape:
                raise CodecError(f"update tensor shape {d.shape} != {s.shape}")
            if not np.isfinite(d).all():
                raise CodecError("update contains NaN or infinity")
        weight = float(min(max(examples, 1), self._max_weight))
        for d, s in zip(delta, self._sums, strict=True):
            s += weight * d
        self.total_weight += weight
        self.count += 1
        return weight

    def add_weighted_sum(self, weighted_sum: Sequence[np.ndarray], total_weight: float,
                         count: int) -> None:
        """Add an already weighted sum (from secure aggregation or another aggregator)."""
        for d, s in zip(weighted_sum, self._sums, strict=True):
            s += d
        self.total_weight += total_weight
        self.count += count

    def mean(self) -> list[np.ndarray]:
        """Weighted mean delta (float32)."""
        if self.total_weight <= 0:
            raise CodecError("no updates were aggregated")
        return [(s / self.total_weight).astype(np.float32) for s in self._sums]

    def sums(self) -> list[np.ndarray]:
        """The raw weighted sums (float64)."""
        return self._sums
