"""Conditional stochastic rounding onto the integer grid with a bounded L2 norm (Kairouz et al.)."""

from __future__ import annotations

import math

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError

# With beta < 1 each try succeeds with probability >= 1 - beta; 1,000 tries never all fail.
_MAX_TRIES = 1000


def rounded_norm_bound(norm: float, dim: int, beta: float) -> float:
    """L2 bound on the stochastically rounded vector, for a real vector of norm <= `norm`.

    Units are those of the integer grid (the vector is already scaled by 1/gamma).
    Unconditional rounding (beta = 0) moves each coordinate by less than 1, so the bound
    is ``norm + sqrt(dim)``. Conditional rounding (0 < beta < 1) re-draws until the norm is
    at most ``sqrt(norm^2 + dim/4 + sqrt(2 ln(1/beta)) * (norm + sqrt(dim)/2))``, which one
    draw meets with probability >= 1 - beta (Kairouz, Liu, Steinke 2021, Sec. 4.1); the
    smaller of the two bounds is returned.
    """
    if norm < 0 or dim < 1 or not 0 <= beta < 1:
        raise PrivacyError(f"invalid rounding bound inputs: norm={norm}, dim={dim}, beta={beta}")
    loose = norm + math.sqrt(dim)
    if beta == 0:
        return loose
    slack = math.sqrt(2.0 * math.log(1.0 / beta))
    tight = math.sqrt(norm * norm + dim / 4.0 + slack * (norm + math.sqrt(dim) / 2.0))
    return min(loose, tight)


def conditional_round(values: Array, bound: float, rng: np.random.Generator) -> Array:
    """Round each coordinate up with probability equal to its fractional part, until the
    rounded vector's L2 norm is <= `bound`.

    Returns
    -------
    numpy.ndarray
        int64 vector, unbiased per coordinate before conditioning.

    Raises
    ------
    PrivacyError
        If no draw meets the bound in 1,000 tries (the bound is too tight for the input).
    """
    flat = np.asarray(values, dtype=np.float64)
    floor = np.floor(flat)
    fraction = flat - floor
    base = floor.astype(np.int64)
    for _ in range(_MAX_TRIES):
        rounded = base + (rng.random(flat.shape) < fraction)
        as_float = rounded.astype(np.float64)
        if math.sqrt(float(np.dot(as_float, as_float))) <= bound:
            accepted: Array = rounded
            return accepted
    raise PrivacyError(
        f"conditional rounding could not meet the norm bound {bound:.6g} in {_MAX_TRIES} tries"
    )
