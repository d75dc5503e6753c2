"""Integer noise samplers: discrete Laplace, discrete Gaussian (Canonne-Kamath-Steinke), Skellam."""

from __future__ import annotations

import math

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError

# Rejection rounds of the discrete Gaussian sampler; each round accepts a constant
# fraction (>= ~0.3) of the pending draws, so 1,000 rounds are never reached in practice.
_MAX_REJECTION_ROUNDS = 1000
# numpy's Poisson sampler drifts from its variance above means of ~1e14 (0.8% at 1e14).
_MAX_POISSON_MEAN = float(2**40)


def noise_generator(rng: np.random.Generator | None = None) -> np.random.Generator:
    """`rng` if given (tests, reproducible runs), else a PCG64 seeded with 128 bits from the OS."""
    return rng if rng is not None else np.random.default_rng()


def discrete_laplace(scale: float, size: int, rng: np.random.Generator | None = None) -> Array:
    """Draw `size` integers with P(y) proportional to exp(-|y| / scale).

    Sampled as the difference of two independent geometric variables on {0, 1, ...} with
    ratio exp(-1/scale), which has exactly that distribution.
    """
    _check_size(size)
    if not math.isfinite(scale) or scale <= 0:
        raise PrivacyError(f"discrete Laplace scale must be a finite number > 0, got {scale}")
    gen = noise_generator(rng)
    success = -math.expm1(-1.0 / scale)  # 1 - exp(-1/scale), accurate for large scales
    first = gen.geometric(success, size).astype(np.int64) - 1
    second = gen.geometric(success, size).astype(np.int64) - 1
    return first - second


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator | None = None) -> Array:
    """Draw `size` integers from the discrete Gaussian N_Z(0, sigma^2), P(y) ~ exp(-y^2 / 2sigma^2).

    The rejection sampler of Canonne, Kamath and Steinke (2020, Algorithm 3), vectorised:
    propose Y from the discrete Laplace with scale t = floor(sigma) + 1 and accept it with
    probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)); all pending coordinates are proposed
    together, and only the rejected ones are proposed again. The accept/reject coins use
    float64 uniforms, so the pmf is exact up to float64 rounding (relative ~1e-16).

    Parameters
    ----------
    sigma : the scale parameter (>= 0; 0 returns zeros). For sigma >= 1 the variance is
        sigma^2 within 1e-8 relative; for smaller sigma it is below sigma^2.
    size : number of draws.
    rng : numpy Generator; None draws from OS-seeded randomness.
    """
    _check_size(size)
    if not math.isfinite(sigma) or sigma < 0:
        raise PrivacyError(f"discrete Gaussian sigma must be a finite number >= 0, got {sigma}")
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out
    gen = noise_generator(rng)
    scale = math.floor(sigma) + 1.0
    variance = sigma * sigma
    shift = variance / scale
    pending = np.arange(size)
    for _ in range(_MAX_REJECTION_ROUNDS):
        proposal = discrete_laplace(scale, pending.size, gen)
        gap = np.abs(proposal) - shift
        accept = gen.random(pending.size) < np.exp(-(gap * gap) / (2.0 * variance))
        out[pending[accept]] = proposal[accept]
        pending = pending[~accept]
        if pending.size == 0:
            return out
    raise PrivacyError(
        f"discrete Gaussian sampler unfinished after {_MAX_REJECTION_ROUNDS} rounds (sigma={sigma})"
    )


def skellam(variance: float, size: int, rng: np.random.Generator | None = None) -> Array:
    """Draw `size` symmetric Skellam integers (Poisson(mu) - Poisson(mu), mu = variance / 2)."""
    _check_size(size)
    if not math.isfinite(variance) or variance < 0:
        raise PrivacyError(f"Skellam variance must be a finite number >= 0, got {variance}")
    mean = variance / 2.0
    if mean > _MAX_POISSON_MEAN:
        limit = 2 * _MAX_POISSON_MEAN
        raise PrivacyError(
            f"Skellam variance {variance} is above the accurate range (<= {limit:g})"
        )
    if mean == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    gen = noise_generator(rng)
    return gen.poisson(mean, size).astype(np.int64) - gen.poisson(mean, size).astype(np.int64)


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise PrivacyError(f"sample size must be an integer >= 0, got {size!r}")
