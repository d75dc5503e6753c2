"""Bit packing and Elias-Fano index coding: round trips, exact sizes, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.codec.bitpack import pack_uint, packed_size, unpack_uint
from fedge.edge_client.codec.indices import coded_size, decode_indices, encode_indices
from fedge.edge_client.errors import CodecError


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 32), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_pack_round_trip(width: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << width, size=count, dtype=np.uint64)
    data = pack_uint(values, width)
    assert len(data) == packed_size(count, width)
    assert np.array_equal(unpack_uint(data, count, width), values)


def test_pack_rejects_values_too_wide_and_bad_lengths() -> None:
    with pytest.raises(CodecError, match="does not fit in 4 bits"):
        pack_uint(np.array([16]), 4)
    with pytest.raises(CodecError, match="expected 2"):
        unpack_uint(b"\x00", 4, 4)
    with pytest.raises(CodecError, match="outside"):
        pack_uint(np.array([1]), 33)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5000), st.data())
def test_indices_round_trip(universe: int, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, min(universe, 400)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    idx = np.sort(np.random.default_rng(seed).choice(universe, count, replace=False))
    blob = encode_indices(idx, universe)
    assert len(blob) == coded_size(universe, count)
    assert np.array_equal(decode_indices(blob, universe, count), idx)


def test_index_code_is_compact() -> None:
    universe, count = 100_000, 1_000
    bits_per_index = 8 * coded_size(universe, count) / count
    assert bits_per_index <= 2 + np.log2(universe / count) + 0.1


def test_encode_rejects_unsorted_or_out_of_range() -> None:
    with pytest.raises(CodecError, match="strictly increasing"):
        encode_indices(np.array([3, 2]), 10)
    with pytest.raises(CodecError, match="strictly increasing"):
        encode_indices(np.array([1, 10]), 10)


def test_decode_rejects_malformed_blocks() -> None:
    universe, count = 1000, 10
    blob = bytearray(encode_indices(np.arange(0, 100, 10), universe))
    with pytest.raises(CodecError, match="bytes, expected"):
        decode_indices(bytes(blob[:-1]), universe, count)
    low_bytes = packed_size(count, 6)  # floor(log2(1000 / 10)) = 6 low bits
    extra_one = bytearray(blob)
    extra_one[low_bytes] |= 0xFF
    with pytest.raises(CodecError, match="holds .* indices, expected 10"):
        decode_indices(bytes(extra_one), universe, count)
    # All ten indices in the last high bucket (15) with low bits 63: 15 * 64 + 63 >= 1000.
    upper = np.zeros(8 * (len(blob) - low_bytes), dtype=np.uint8)
    upper[15:25] = 1  # set bit of index i sits at high + i
    late = b"\xff" * low_bytes + np.packbits(upper, bitorder="little").tobytes()
    with pytest.raises(CodecError, match="out of range or not strictly increasing"):
        decode_indices(bytes(late), universe, count)
