"""Version-stable random streams that device and server derive from the round seed."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import CodecError

MAX_SEED = (1 << 64) - 1


class Purpose(IntEnum):
    """What a shared stream is used for (keeps streams of one round independent)."""

    RANDOM_K = 1
    ROTATION = 2


def check_seed(name: str, seed: int) -> int:
    """Return ``seed`` if it is an int in ``[0, 2**64)``, else raise CodecError."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= MAX_SEED
    ):
        raise CodecError(f"{name} must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def shared_raw(round_seed: int, purpose: Purpose, section: int, count: int) -> Array:
    """``count`` raw uint64 words from PCG64 seeded by (round_seed, purpose, section).

    SeedSequence and PCG64 raw output are stable across numpy versions (unlike ``Generator``
    methods), so a device and the server always derive the same words.
    """
    sequence = np.random.SeedSequence([check_seed("round_seed", round_seed), int(purpose), section])
    return np.random.PCG64(sequence).random_raw(count)
