"""Elias-Fano coding of a sorted index set: about 2 + log2(n/k) bits per index."""

from __future__ import annotations

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.bitpack import pack_uint, packed_size, unpack_uint
from fedge.edge_client.errors import CodecError


def _low_bits(universe: int, count: int) -> int:
    return (universe // count).bit_length() - 1


def _upper_len(universe: int, count: int) -> int:
    return count + ((universe - 1) >> _low_bits(universe, count))


def coded_size(universe: int, count: int) -> int:
    """Bytes that :func:`encode_indices` produces for ``count`` indices below ``universe``."""
    return packed_size(count, _low_bits(universe, count)) + (_upper_len(universe, count) + 7) // 8


def encode_indices(indices: Array, universe: int) -> bytes:
    """Encode strictly increasing indices in ``[0, universe)``.

    Each index is split into ``l = floor(log2(universe / count))`` low bits, stored bitpacked,
    and a high part, stored in unary as one set bit at position ``high[i] + i``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    count = idx.size
    if count == 0 or not 0 < count <= universe:
        raise CodecError(f"cannot code {count} indices in a universe of {universe}")
    if idx[0] < 0 or idx[-1] >= universe or np.any(np.diff(idx) <= 0):
        raise CodecError("indices must be strictly increasing and inside the universe")
    low_bits = _low_bits(universe, count)
    low = pack_uint(idx & ((1 << low_bits) - 1), low_bits)
    upper = np.zeros(_upper_len(universe, count), dtype=np.uint8)
    upper[(idx >> low_bits) + np.arange(count)] = 1
    return low + np.packbits(upper, bitorder="little").tobytes()


def decode_indices(data: bytes, universe: int, count: int) -> Array:
    """Inverse of :func:`encode_indices`; validates length, count, order and range.

    Returns
    -------
    int64 array of ``count`` strictly increasing indices below ``universe``.
    """
    if not 0 < count <= universe:
        raise CodecError(f"cannot decode {count} indices in a universe of {universe}")
    if len(data) != coded_size(universe, count):
        raise CodecError(
            f"index block is {len(data)} bytes, expected {coded_size(universe, count)}"
        )
    low_bits = _low_bits(universe, count)
    split = packed_size(count, low_bits)
    low = unpack_uint(data[:split], count, low_bits).astype(np.int64)
    upper = np.unpackbits(np.frombuffer(data[split:], dtype=np.uint8), bitorder="little")
    ones = np.flatnonzero(upper[: _upper_len(universe, count)])
    if ones.size != count:
        raise CodecError(f"index block holds {ones.size} indices, expected {count}")
    idx = ((ones - np.arange(count)) << low_bits) | low
    if idx[-1] >= universe or np.any(np.diff(idx) <= 0):
        raise CodecError("decoded indices are out of range or not strictly increasing")
    return idx
