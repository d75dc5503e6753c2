"""Randomized Hadamard rotation: shared random signs, then a fast Walsh-Hadamard transform."""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
import numpy.typing as npt

from fedge.edge_client.codec.seeds import Purpose, shared_raw

PAD_QUANTUM = 64
Vector = npt.NDArray[np.float64]


class Padding(Enum):
    """How a vector is zero-padded before the transform (the padding is sent, so it costs)."""

    CHUNKED = "chunked"
    """Codec: up to 64 values to the next power of two, longer ones to a multiple of 64,
    rotated in power-of-two chunks (at most 63 extra values instead of up to n - 1)."""
    POWER_OF_TWO = "power_of_two"
    """Distributed DP: the next power of two, one transform over the whole vector, so every
    coordinate mixes with every other (its noise and wrap-around bounds assume that)."""


def padded_length(n: int, padding: Padding = Padding.CHUNKED) -> int:
    """Length a vector of ``n`` values has after rotation with ``padding``."""
    if padding is Padding.POWER_OF_TWO or n <= PAD_QUANTUM:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // PAD_QUANTUM) * PAD_QUANTUM


def chunk_sizes(n: int, padding: Padding = Padding.CHUNKED) -> list[int]:
    """Power-of-two chunks, largest first, tiling ``padded_length(n)`` (its binary digits)."""
    m = padded_length(n, padding)
    return [1 << b for b in reversed(range(m.bit_length())) if m >> b & 1]


def fwht(x: npt.ArrayLike) -> Vector:
    """Orthonormal Walsh-Hadamard transform (Sylvester order) of a power-of-two length vector.

    Symmetric and orthonormal, hence its own inverse. The length is not checked here.
    """
    y = np.array(x, dtype=np.float64)
    d = y.size
    h = 1
    while h < d:
        pairs = y.reshape(-1, 2, h)
        y = np.concatenate((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), axis=1)
        h *= 2
    return y.reshape(d) / math.sqrt(d)


def signs_from_words(words: npt.NDArray[np.uint64], m: int) -> Vector:
    """The diagonal of ``m`` signs: bit i of the little-endian raw words, set -> -1.

    This is the cross-device contract for every rotation: device and server derive the same
    words (PCG64 raw output is stable across numpy versions), hence the same signs.
    """
    bits = np.unpackbits(np.asarray(words, dtype="<u8").view(np.uint8), bitorder="little")[:m]
    return 1.0 - 2.0 * bits.astype(np.float64)


def round_signs(m: int, round_seed: int, section: int) -> Vector:
    """Codec signs: the round's shared rotation stream of ``section``."""
    return signs_from_words(shared_raw(round_seed, Purpose.ROTATION, section, -(-m // 64)), m)


def seed_signs(m: int, seed: int) -> Vector:
    """Distributed-DP signs: the raw stream of ``PCG64(seed)``."""
    return signs_from_words(np.random.PCG64(seed).random_raw(-(-m // 64)), m)


def _per_chunk(y: Vector, sizes: list[int]) -> Vector:
    out = np.empty_like(y)
    start = 0
    for size in sizes:
        out[start : start + size] = fwht(y[start : start + size])
        start += size
    return out


def rotate_signed(x: npt.ArrayLike, signs: Vector, padding: Padding) -> Vector:
    """H D x: zero-pad 1-D ``x`` to ``signs.size``, flip signs, Hadamard per chunk.

    ``signs`` holds ``padded_length(x.size, padding)`` values. The map is orthogonal on the
    padded space, so L2 norms are preserved exactly.
    """
    values = np.asarray(x)
    n = values.size
    padded = np.zeros(signs.size, dtype=np.float64)
    padded[:n] = values
    return _per_chunk(padded * signs, chunk_sizes(n, padding))


def unrotate_signed(y: npt.ArrayLike, n: int, signs: Vector, padding: Padding) -> Vector:
    """D H y, the inverse of :func:`rotate_signed`, cut back to the first ``n`` values."""
    values = np.asarray(y, dtype=np.float64)
    return (_per_chunk(values, chunk_sizes(n, padding)) * signs)[:n]


def rotate(x: npt.ArrayLike, *, round_seed: int, section: int) -> Vector:
    """Codec rotation of a 1-D vector: float64 vector of length ``padded_length(x.size)``."""
    m = padded_length(np.asarray(x).size)
    return rotate_signed(x, round_signs(m, round_seed, section), Padding.CHUNKED)


def unrotate(y: npt.ArrayLike, n: int, *, round_seed: int, section: int) -> Vector:
    """Inverse of :func:`rotate`, truncated back to the first ``n`` values (float64)."""
    values = np.asarray(y, dtype=np.float64)
    return unrotate_signed(
        values, n, round_signs(values.size, round_seed, section), Padding.CHUNKED
    )
