"""Streaming weighted aggregation: each update is added to a running sum as it arrives.

The sum is kept in 64-bit fixed point (2^-24 resolution), so it is exact and independent of
the order in which updates arrive: the same reports give the same model bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import CodecError

FRACTION_BITS = 24
_SCALE = float(1 << FRACTION_BITS)
_CAPACITY = float(1 << (62 - FRACTION_BITS))  # |running sum| stays below 2^62 in fixed point


class StreamingMean:
    """Weighted running sum of deltas; memory is one model, whatever the number of devices."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], max_weight: float):
        self._sums = [np.zeros(s, np.int64) for s in shapes]
        self._max_weight = float(max_weight)
        self._bound = 0.0
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Sequence[Array], examples: int) -> float:
        """Add one device's delta weighted by its (capped) example count; returns the weight.

        Raises CodecError (and changes nothing) for a wrong tensor count or shape, NaN or
        infinity, or values so large the sum could overflow.
        """
        if len(delta) != len(self._sums):
            raise CodecError(f"update has {len(delta)} tensors, expected {len(self._sums)}")
        weight = float(min(max(examples, 1), self._max_weight))
        peak = 0.0
        for d, s in zip(delta, self._sums, strict=True):
            if d.shape != s.shape:
                raise CodecError(f"update tensor shape {d.shape} != {s.shape}")
            if not np.isfinite(d).all():
                raise CodecError("update contains NaN or infinity")
            if d.size:
                peak = max(peak, float(np.max(np.abs(d))) * weight)
        if self._bound + peak >= _CAPACITY:
            raise CodecError(f"update values up to {peak:.3g} are too large to aggregate")
        for d, s in zip(delta, self._sums, strict=True):
            s += np.rint(d.astype(np.float64) * (weight * _SCALE)).astype(np.int64)
        self._bound += peak
        self.total_weight += weight
        self.count += 1
        return weight

    def mean(self) -> list[Array]:
        """Weighted mean delta (float32)."""
        if self.total_weight <= 0:
            raise CodecError("no updates were aggregated")
        return [
            (s.astype(np.float64) / (_SCALE * self.total_weight)).astype(np.float32)
            for s in self._sums
        ]

    def sums(self) -> list[Array]:
        """The weighted sums as float64."""
        return [s.astype(np.float64) / _SCALE for s in self._sums]
