"""Choose which coordinates an update sends: top-k by magnitude or a shared random-k set."""

from __future__ import annotations

import functools
import math

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.seeds import Purpose, shared_raw


def keep_count(fraction: float, size: int) -> int:
    """Coordinates kept out of ``size``: ``round(fraction * size)`` clamped to ``[1, size]``."""
    return min(size, max(1, math.floor(fraction * size + 0.5)))


def topk_indices(values: Array, k: int) -> Array:
    """Sorted indices of the ``k`` entries of largest magnitude (ties broken arbitrarily)."""
    if k >= values.size:
        return np.arange(values.size, dtype=np.int64)
    part = np.argpartition(np.abs(values), values.size - k)[values.size - k :]
    return np.sort(part).astype(np.int64)


@functools.lru_cache(maxsize=64)
def random_indices(size: int, k: int, *, round_seed: int, section: int) -> Array:
    """Sorted set of ``k`` distinct indices in ``[0, size)``, the same for every caller
    with the same (round_seed, section).

    Each index gets a raw 64-bit key whose low bits are replaced by the index itself (so
    keys are distinct); the ``k`` smallest keys win. Uniform over all k-subsets up to the
    ``2**-(64 - log2 size)`` granularity of the keys.
    """
    if k >= size:
        return np.arange(size, dtype=np.int64)
    shift = np.uint64(max(1, (size - 1).bit_length()))
    keys = (shared_raw(round_seed, Purpose.RANDOM_K, section, size) >> shift) << shift
    keys |= np.arange(size, dtype=np.uint64)
    chosen = np.sort(np.argpartition(keys, k - 1)[:k]).astype(np.int64)
    chosen.flags.writeable = False  # cached: every update of a round shares one index set
    return chosen
