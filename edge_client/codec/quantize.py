"""Stochastic (unbiased) uniform quantization with a symmetric range per block or coordinate.

A value x with range scale s > 0 and b bits maps to the grid ``-s + j * 2s / (2^b - 1)``,
j = 0 .. 2^b - 1, rounding up with probability equal to its distance from the lower grid
point. Hence E[Q(x)] = x and, for every coordinate, ``|x - Q(x)| < 2s / (2^b - 1)``.
"""

from __future__ import annotations

import numpy as np

from fedge.edge_client.arrays import Array

FLOAT16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
FLOAT16_MAX = float(np.finfo(np.float16).max)


def level_count(bits: int) -> int:
    """Largest quantization level, ``2**bits - 1``."""
    return (1 << bits) - 1


def stochastic_round(x: Array, scale: Array, bits: int, rng: np.random.Generator) -> Array:
    """Quantize ``x`` (clipped to ``[-scale, scale]``) to integer levels in ``[0, 2**bits)``.

    Parameters
    ----------
    x : values (float64 is used internally).
    scale : per-coordinate range half-widths, broadcastable to ``x``, all >= 0.
    bits : quantization width.
    rng : source of the rounding noise (seeded by the caller).

    Returns
    -------
    uint64 levels; a zero scale gives level 0, which decodes to 0.
    """
    top = level_count(bits)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), x.shape)
    safe = np.where(s > 0, s, 1.0)
    v = np.where(s > 0, (np.clip(x, -s, s) + s) / (2.0 * safe) * top, 0.0)
    q = np.floor(v + rng.random(x.shape))
    levels: Array = np.clip(q, 0, top).astype(np.uint64)
    return levels


def dequantize(levels: Array, scale: Array, bits: int, count: int = 1) -> Array:
    """Map levels back to values; with ``count`` > 1, ``levels`` is a sum of ``count`` level
    vectors (same scales) and the result is the sum of their values.
    """
    s = np.asarray(scale, dtype=np.float64)
    return -count * s + levels.astype(np.float64) * (2.0 * s / level_count(bits))


def block_count(size: int, block: int | None) -> int:
    """Number of scale blocks for ``size`` values (one block when ``block`` is None)."""
    return 1 if block is None else max(1, -(-size // block))


def block_max(x: Array, block: int | None) -> Array:
    """Largest magnitude in each block of ``x`` (the last block may be short)."""
    if block is None or x.size == 0:
        return np.array([np.max(np.abs(x), initial=0.0)])
    padded = np.zeros(block_count(x.size, block) * block)
    padded[: x.size] = np.abs(x)
    scales: Array = padded.reshape(-1, block).max(axis=1)
    return scales


def expand_scales(scales: Array, block: int | None, size: int) -> Array:
    """Per-coordinate scale vector of length ``size`` from per-block scales."""
    if block is None:
        return np.full(size, float(scales[0]))
    return np.repeat(scales.astype(np.float64), block)[:size]


def storable_scales(scales: Array) -> Array:
    """Scales as float16 when every one fits its normal range, else float32, rounded up.

    Rounding up keeps every value inside its block's range, so the error bound holds with the
    stored scale.
    """
    s = np.asarray(scales, dtype=np.float64)
    positive = s[s > 0]
    fits16 = positive.size == 0 or (
        positive.min() >= FLOAT16_MIN_NORMAL and positive.max() <= FLOAT16_MAX / 2
    )
    dtype = np.float16 if fits16 else np.float32
    stored = s.astype(dtype)
    low = stored.astype(np.float64) < s
    stored[low] = np.nextafter(stored[low], dtype(np.inf))
    return stored
