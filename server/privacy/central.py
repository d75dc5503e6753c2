"""Central DP (trusted server): Gaussian noise on the sum of clipped updates, fixed denominator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.sampling import noise_generator


def add_gaussian_noise(
    total: Sequence[Array], stddev: float, rng: np.random.Generator | None = None
) -> list[Array]:
    """Return copies of `total` with i.i.d. N(0, stddev^2) added to every coordinate.

    The noise is drawn in float64 and the result keeps each array's float dtype.
    """
    if not math.isfinite(stddev) or stddev < 0:
        raise PrivacyError(f"noise stddev must be a finite number >= 0, got {stddev}")
    gen = noise_generator(rng)
    noisy = []
    for index, array in enumerate(total):
        values = np.asarray(array)
        if not np.issubdtype(values.dtype, np.floating):
            raise PrivacyError(f"sum array {index} has dtype {values.dtype}, expected float")
        noise = gen.normal(0.0, stddev, values.shape) if stddev > 0 else 0.0
        noisy.append((values.astype(np.float64) + noise).astype(values.dtype))
    return noisy


def central_dp_mean(
    clipped_sum: Sequence[Array],
    clip: float,
    noise_multiplier: float,
    expected_clients: float,
    rng: np.random.Generator | None = None,
) -> list[Array]:
    """DP-FedAvg's private mean (McMahan et al. 2018): (sum + N(0, (z C)^2)) / expected_clients.

    Parameters
    ----------
    clipped_sum : sum over this round's devices of their updates clipped to `clip`.
    clip : the clip norm C the devices used (sensitivity of the sum: one device adds at most C).
    noise_multiplier : z of the update noise (with adaptive clipping, the reduced z_delta
        from `update_noise_multiplier`).
    expected_clients : the fixed denominator, the expected number of sampled devices
        (not the number that reported, which would depend on one device's presence).
    rng : numpy Generator; None uses OS-seeded randomness.
    """
    if not math.isfinite(clip) or clip <= 0:
        raise PrivacyError(f"clip must be a finite number > 0, got {clip}")
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise PrivacyError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not math.isfinite(expected_clients) or expected_clients <= 0:
        raise PrivacyError(f"expected clients must be a finite number > 0, got {expected_clients}")
    noisy = add_gaussian_noise(clipped_sum, noise_multiplier * clip, rng)
    return [(array / expected_clients).astype(array.dtype) for array in noisy]
