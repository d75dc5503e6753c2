"""Server side of distributed DP: turn the securely aggregated ring sum back into a float sum."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.ddp_params import DistributedDPParams
from fedge.edge_client.privacy.rotation import unrotate


def decode_noisy_sum(
    ring_sum: Array,
    params: DistributedDPParams,
    rotation_seed: int,
    shapes: Sequence[tuple[int, ...]],
) -> list[Array]:
    """Decode the sum (mod 2**32 or 2**bits) of devices' `encode_distributed` vectors.

    Reduces modulo 2**bits, maps to the signed range [-2**(bits-1), 2**(bits-1)), divides
    by the scale, undoes the rotation and splits into `shapes`. The result is the noisy
    sum of clipped updates; divide by the expected number of devices for the mean.

    Raises
    ------
    PrivacyError
        If the vector length or the shapes do not match `params`.
    """
    values = np.asarray(ring_sum)
    if values.ndim != 1 or values.size != params.padded_dim:
        raise PrivacyError(f"ring sum has shape {values.shape}, expected ({params.padded_dim},)")
    if not np.issubdtype(values.dtype, np.integer):
        raise PrivacyError(f"ring sum has dtype {values.dtype}, expected an integer type")
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != params.dim:
        raise PrivacyError(
            f"shapes hold {sum(sizes)} values, the DP parameters expect {params.dim}"
        )
    residues = np.mod(values.astype(np.int64), params.modulus)
    signed = np.where(residues >= params.modulus // 2, residues - params.modulus, residues)
    flat = unrotate(signed.astype(np.float64) / params.scale, rotation_seed, params.dim)
    arrays = []
    offset = 0
    for shape, size in zip(shapes, sizes, strict=True):
        arrays.append(flat[offset : offset + size].reshape(shape).astype(np.float32))
        offset += size
    return arrays
