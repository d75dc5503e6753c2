"""Distributed DP's view of the codec's Hadamard rotation: power-of-two padding, PCG64(seed) signs."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.edge_client.codec import rotation as hadamard
from fedge.edge_client.codec.rotation import Padding, Vector
from fedge.edge_client.errors import PrivacyError

PADDING = Padding.POWER_OF_TWO


def padded_length(dim: int) -> int:
    """Smallest power of two >= `dim` (one transform over the whole vector)."""
    if dim < 1:
        raise PrivacyError(f"dimension must be >= 1, got {dim}")
    return int(hadamard.padded_length(dim, PADDING))


def fwht(values: npt.NDArray[Any]) -> Vector:
    """The codec's orthonormal Walsh-Hadamard transform, refusing what is not 1-D power-of-two."""
    n = values.shape[0]
    if values.ndim != 1 or n & (n - 1) or n == 0:
        raise PrivacyError(
            f"Hadamard transform needs a 1-D power-of-two vector, got {values.shape}"
        )
    return hadamard.fwht(values)


def random_signs(seed: int, length: int) -> Vector:
    """The diagonal D of +-1 for `seed`: the same on every device and platform."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise PrivacyError(f"rotation seed must be an integer >= 0, got {seed!r}")
    return hadamard.seed_signs(length, int(seed))


def rotate(vector: npt.ArrayLike, seed: int) -> Vector:
    """Zero-pad `vector` (flattened) to a power of two and return H D x (float64)."""
    flat = np.asarray(vector, dtype=np.float64).ravel()
    return hadamard.rotate_signed(flat, random_signs(seed, padded_length(flat.size)), PADDING)


def unrotate(rotated: npt.ArrayLike, seed: int, dim: int) -> Vector:
    """Invert `rotate`: D H y, cut back to the first `dim` coordinates (float64)."""
    values = np.asarray(rotated, dtype=np.float64)
    expected = padded_length(dim)
    if values.ndim != 1 or values.size != expected:
        raise PrivacyError(f"rotated vector has shape {values.shape}, expected ({expected},)")
    return hadamard.unrotate_signed(values, dim, random_signs(seed, values.size), PADDING)
