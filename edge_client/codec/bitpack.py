"""Pack unsigned integers of a fixed bit width into bytes (little-endian bit order) and back."""

from __future__ import annotations

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import CodecError

MAX_WIDTH = 32


def packed_size(count: int, width: int) -> int:
    """Number of bytes that ``count`` values of ``width`` bits occupy."""
    return (count * width + 7) // 8


def pack_uint(values: Array, width: int) -> bytes:
    """Pack non-negative integers, each below ``2**width``, into ``packed_size`` bytes.

    Parameters
    ----------
    values : 1-D integer array.
    width : bits per value, 0 to 32 (0 packs nothing).
    """
    if not 0 <= width <= MAX_WIDTH:
        raise CodecError(f"bit width {width} outside [0, {MAX_WIDTH}]")
    v = np.asarray(values).astype(np.uint64).ravel()
    if width == 0 or v.size == 0:
        return b""
    if int(v.max()) >> width:
        raise CodecError(f"value {int(v.max())} does not fit in {width} bits")
    if width in (8, 16, 32):
        return v.astype(f"<u{width // 8}").tobytes()
    bits = ((v[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_uint(data: bytes, count: int, width: int) -> Array:
    """Inverse of :func:`pack_uint`; ``data`` must be exactly ``packed_size(count, width)`` bytes.

    Returns
    -------
    uint64 array of ``count`` values (trailing pad bits are ignored).
    """
    if not 0 <= width <= MAX_WIDTH:
        raise CodecError(f"bit width {width} outside [0, {MAX_WIDTH}]")
    if len(data) != packed_size(count, width):
        raise CodecError(
            f"packed data is {len(data)} bytes, expected {packed_size(count, width)} "
            f"for {count} values of {width} bits"
        )
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    if width in (8, 16, 32):
        return np.frombuffer(data, dtype=f"<u{width // 8}").astype(np.uint64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    matrix = bits[: count * width].reshape(count, width).astype(np.uint64)
    values: Array = (matrix << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return values
