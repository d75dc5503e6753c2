"""Randomized Hadamard rotation: shared random signs, then a fast Walsh-Hadamard transform."""

from __future__ import annotations

import numpy as np

from fedge.edge_client.codec.seeds import Purpose, shared_raw

PAD_QUANTUM = 64


def padded_length(n: int) -> int:
    """Length a vector of ``n`` values has after rotation.

    Up to 64 values pad to the next power of two; longer vectors pad to a multiple of 64 only
    (at most 63 extra values instead of up to n - 1) and are rotated in power-of-two chunks.
    """
    if n <= PAD_QUANTUM:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // PAD_QUANTUM) * PAD_QUANTUM


def chunk_sizes(n: int) -> list[int]:
    """Power-of-two chunks, largest first, tiling ``padded_length(n)`` (its binary digits)."""
    m = padded_length(n)
    return [1 << b for b in reversed(range(m.bit_length())) if m >> b & 1]


def _fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal Walsh-Hadamard transform of a power-of-two length vector (self-inverse)."""
    d = x.size
    y = x.astype(np.float64)
    h = 1
    while h < d:
        pairs = y.reshape(-1, 2, h)
        y = np.concatenate((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), axis=1)
        h *= 2
    return y.reshape(d) / np.sqrt(d)


def _signs(m: int, round_seed: int, section: int) -> np.ndarray:
    words = shared_raw(round_seed, Purpose.ROTATION, section, -(-m // 64))
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:m]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _per_chunk(y: np.ndarray, n: int) -> np.ndarray:
    out = np.empty_like(y)
    start = 0
    for size in chunk_sizes(n):
        out[start : start + size] = _fwht(y[start : start + size])
        start += size
    return out


def rotate(x: np.ndarray, *, round_seed: int, section: int) -> np.ndarray:
    """Rotate a 1-D vector: zero-pad to ``padded_length``, flip signs, Hadamard per chunk.

    The map is orthogonal on the padded space, so L2 norms are preserved exactly.

    Returns
    -------
    float64 vector of length ``padded_length(x.size)``.
    """
    n = x.size
    padded = np.zeros(padded_length(n), dtype=np.float64)
    padded[:n] = x
    return _per_chunk(padded * _signs(padded.size, round_seed, section), n)


def unrotate(y: np.ndarray, n: int, *, round_seed: int, section: int) -> np.ndarray:
    """Inverse of :func:`rotate`, truncated back to the first ``n`` values (float64)."""
    return (_per_chunk(np.asarray(y, dtype=np.float64), n) * _signs(y.size, round_seed, section))[
        :n
    ]
