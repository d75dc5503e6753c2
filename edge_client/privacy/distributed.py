"""Device side of distributed DP: clip, rotate, quantize, add integer noise, reduce mod 2**bits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.clipping import clip_update
from fedge.edge_client.privacy.ddp_params import DistributedDPParams
from fedge.edge_client.privacy.rotation import rotate
from fedge.edge_client.privacy.rounding import conditional_round
from fedge.edge_client.privacy.sampling import discrete_gaussian, noise_generator, skellam
from fedge.edge_client.privacy.spec import DistributedNoise


def encode_distributed(
    update: Sequence[Array],
    params: DistributedDPParams,
    rotation_seed: int,
    rng: np.random.Generator | None = None,
) -> Array:
    """Turn a float update into the noisy ring vector this device feeds secure aggregation.

    Steps (Kairouz, Liu, Steinke 2021, Algorithm 1): clip to `params.clip`; flatten, pad
    to a power of two and rotate with the round's shared `rotation_seed`; scale to the
    integer grid; round stochastically, re-drawing until the norm is within
    `params.norm_bound`; add discrete Gaussian (or Skellam) noise of standard deviation
    `params.local_stddev`; reduce modulo 2**bits.

    Parameters
    ----------
    update : float arrays whose total size is `params.dim`.
    params : the round's distributed-DP parameters (from the task).
    rotation_seed : the round's rotation seed, the same for every device of the round.
    rng : numpy Generator for rounding and noise; None uses OS-seeded randomness.

    Returns
    -------
    numpy.ndarray
        uint32 vector of length `params.padded_dim`, values in [0, 2**bits).
    """
    size = sum(int(np.asarray(array).size) for array in update)
    if size != params.dim:
        raise PrivacyError(f"update has {size} values, the DP parameters expect {params.dim}")
    gen = noise_generator(rng)
    clipped = clip_update(update, params.clip).arrays
    flat = np.concatenate([array.astype(np.float64).ravel() for array in clipped])
    grid = rotate(flat, rotation_seed) * params.scale
    rounded = conditional_round(grid, params.norm_bound, gen)
    if params.noise is DistributedNoise.DGAUSS:
        noise = discrete_gaussian(params.local_stddev, rounded.size, gen)
    else:
        noise = skellam(params.local_stddev**2, rounded.size, gen)
    return np.mod(rounded + noise, params.modulus).astype(np.uint32)
