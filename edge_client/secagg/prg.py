"""The mask PRG: AES-256-CTR keystreams viewed as uint32 vectors, added into a target in place."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import SecAggError

CHUNK_WORDS = 1 << 14  # 64 KiB of keystream: the buffer and the target slice stay in L2
GROUP = 512  # encryptors alive at once (bounds memory; each holds an AES key schedule)
_ZERO_IV = bytes(16)  # each PRG key is used for exactly one stream, so a fixed IV is safe
_ZEROS = bytearray(4 * CHUNK_WORDS)


def _encryptor(key: bytes) -> CipherContext:
    if len(key) != 32:
        raise SecAggError("a PRG key must be 32 bytes")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


def apply_masks(target: Array, masks: Sequence[tuple[bytes, int]]) -> None:
    """Add (sign +1) or subtract (sign -1) the PRG expansion of each key into ``target``.

    Each key's keystream is one AES-CTR stream over 4 * len(target) zero bytes, produced
    chunk by chunk into one reused cache-sized buffer: the outer loop walks ``target`` in
    chunks, the inner loop applies every mask (of a group of up to GROUP keys) to that
    cache-hot slice, so per mask and chunk there is one AES pass and one in-place numpy
    add/subtract mod 2^32, and no full-length temporary is ever allocated.

    Parameters
    ----------
    target
        1-D C-contiguous uint32 array, modified in place.
    masks
        ``(prg_key, sign)`` pairs; sign is +1 or -1.
    """
    if target.dtype != np.uint32 or target.ndim != 1 or not target.flags.c_contiguous:
        raise SecAggError("mask target must be a contiguous 1-D uint32 array")
    if any(sign not in (1, -1) for _, sign in masks):
        raise SecAggError("mask signs must be +1 or -1")
    buf = bytearray(4 * CHUNK_WORDS + 15)  # update_into needs block_size - 1 spare bytes
    words = np.frombuffer(buf, dtype="<u4", count=CHUNK_WORDS)
    zeros = memoryview(_ZEROS)
    n = target.shape[0]
    for first in range(0, len(masks), GROUP):
        encryptors = [(_encryptor(key), sign) for key, sign in masks[first : first + GROUP]]
        for start in range(0, n, CHUNK_WORDS):
            stop = min(n, start + CHUNK_WORDS)
            part = target[start:stop]
            src = zeros[: 4 * (stop - start)]
            view = words[: stop - start]
            for enc, sign in encryptors:
                enc.update_into(src, buf)
                if sign > 0:
                    np.add(part, view, out=part)
                else:
                    np.subtract(part, view, out=part)
