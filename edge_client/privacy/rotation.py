"""Randomized Hadamard rotation (H D x) that spreads an update evenly over its coordinates."""

from __future__ import annotations

import math

import numpy as np

from fedge.edge_client.errors import PrivacyError


def padded_length(dim: int) -> int:
    """Smallest power of two >= `dim` (the Hadamard transform needs one)."""
    if dim < 1:
        raise PrivacyError(f"dimension must be >= 1, got {dim}")
    return 1 << (dim - 1).bit_length()


def fwht(values: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform (Sylvester order) of a power-of-two vector.

    The transform is symmetric and orthonormal, hence its own inverse.
    """
    n = values.shape[0]
    if values.ndim != 1 or n & (n - 1) or n == 0:
        raise PrivacyError(
            f"Hadamard transform needs a 1-D power-of-two vector, got {values.shape}"
        )
    out = np.array(values, dtype=np.float64)
    half = 1
    while half < n:
        blocks = out.reshape(-1, 2, half)
        top = blocks[:, 0, :]
        bottom = blocks[:, 1, :]
        out = np.stack((top + bottom, top - bottom), axis=1).reshape(n)
        half *= 2
    return out / math.sqrt(n)


def random_signs(seed: int, length: int) -> np.ndarray:
    """The diagonal D of +-1 for `seed`: the same on every device and platform.

    Built from the raw 64-bit output of PCG64 (whose stream numpy keeps stable across
    versions), one bit per sign, little-endian.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PrivacyError(f"rotation seed must be an integer >= 0, got {seed!r}")
    words = np.random.PCG64(int(seed)).random_raw((length + 63) // 64)
    raw_bytes = np.asarray(words, dtype="<u8").view(np.uint8)
    bits = np.unpackbits(raw_bytes, bitorder="little")[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def rotate(vector: np.ndarray, seed: int) -> np.ndarray:
    """Zero-pad `vector` to a power of two and return H D x (float64)."""
    flat = np.asarray(vector, dtype=np.float64).ravel()
    length = padded_length(flat.size)
    padded = np.zeros(length, dtype=np.float64)
    padded[: flat.size] = flat
    return fwht(padded * random_signs(seed, length))


def unrotate(rotated: np.ndarray, seed: int, dim: int) -> np.ndarray:
    """Invert `rotate`: D H y, cut back to the first `dim` coordinates (float64)."""
    values = np.asarray(rotated, dtype=np.float64)
    expected = padded_length(dim)
    if values.ndim != 1 or values.size != expected:
        raise PrivacyError(f"rotated vector has shape {values.shape}, expected ({expected},)")
    return (fwht(values) * random_signs(seed, values.size))[:dim]
