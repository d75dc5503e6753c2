"""The exploration script's building blocks: scheme parsing and coordinate choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.bench.sparsify_explore import DEFAULT_SCHEMES, Scheme, parse_scheme, top_coordinates


def test_scheme_text_parses_to_the_scheme() -> None:
    assert parse_scheme("topk:0.01:4:gamma=0.5") == Scheme("topk", 0.01, 4, gamma=0.5)
    assert parse_scheme("block:0.07:2:block=10") == Scheme("block", 0.07, 2, block=10)
    assert parse_scheme("dense") == Scheme("dense")
    assert len({s.label for s in DEFAULT_SCHEMES}) == len(DEFAULT_SCHEMES)


@settings(max_examples=50, deadline=None)
@given(size=st.integers(20, 400), frac=st.floats(0.01, 0.5), seed=st.integers(0, 1000))
def test_top_coordinates_keep_the_largest(size: int, frac: float, seed: int) -> None:
    vec = np.random.default_rng(seed).normal(size=size)
    idx = top_coordinates(vec, frac)
    assert len(idx) == len(set(idx.tolist())) == max(1, round(frac * size))
    assert np.abs(vec[idx]).min() >= np.abs(np.delete(vec, idx)).max(initial=0.0)


@pytest.mark.parametrize("size", [100, 105])
def test_block_top_coordinates_take_whole_blocks(size: int) -> None:
    vec = np.zeros(size)
    vec[30:40] = 1.0  # block 3 is the only one with mass
    vec[size - 1] = 5.0  # the short last block
    idx = top_coordinates(vec, frac=0.2, block=10)
    blocks = set((idx // 10).tolist())
    assert blocks >= {3, (size - 1) // 10} and len(blocks) == 2
    assert idx.max() < size
