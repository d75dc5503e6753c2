"""Stochastic uniform quantization: proven error bound, unbiasedness, scale storage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.codec.quantize import (
    block_max,
    dequantize,
    expand_scales,
    level_count,
    stochastic_round,
    storable_scales,
)
from fedge.edge_client.codec.spec import ALLOWED_BITS


def _round_trip(x: np.ndarray, bits: int, block: int | None, seed: int) -> tuple[np.ndarray, ...]:
    scales = storable_scales(block_max(x, block))
    per_coord = expand_scales(scales.astype(np.float64), block, x.size)
    levels = stochastic_round(x, per_coord, bits, np.random.default_rng(seed))
    return dequantize(levels, per_coord, bits), per_coord, levels


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ALLOWED_BITS),
    st.sampled_from([None, 16, 100, 256]),
    st.integers(1, 700),
    st.floats(1e-6, 1e4),
    st.integers(0, 2**32 - 1),
)
def test_error_bound_per_coordinate(
    bits: int, block: int | None, size: int, magnitude: float, seed: int
) -> None:
    """|x - Q(x)| < 2 s / (2^b - 1) with s the stored (rounded-up) scale of x's block."""
    x = np.random.default_rng(seed).standard_t(3, size=size) * magnitude
    decoded, per_coord, levels = _round_trip(x, bits, block, seed)
    assert levels.max() <= level_count(bits)
    assert np.all(np.abs(x) <= per_coord)
    bound = 2 * per_coord / level_count(bits)
    assert np.all(np.abs(x - decoded) <= bound * (1 + 1e-12))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_unbiased_over_many_draws(bits: int) -> None:
    x = np.random.default_rng(7).normal(size=32)
    scale = np.full(x.size, np.abs(x).max())
    draws = 4000
    tiled = np.tile(x, (draws, 1))
    levels = stochastic_round(tiled, scale, bits, np.random.default_rng(bits))
    mean = dequantize(levels, scale, bits).mean(axis=0)
    step = 2 * scale / level_count(bits)
    # Each draw is within one step of x and has std <= step / 2: five standard errors.
    assert np.all(np.abs(mean - x) <= 5 * step / (2 * np.sqrt(draws)))


def test_zero_block_decodes_to_zero() -> None:
    x = np.zeros(40)
    decoded, per_coord, levels = _round_trip(x, 4, 16, 0)
    assert np.all(decoded == 0) and np.all(levels == 0) and np.all(per_coord == 0)


def test_scales_round_up_and_pick_dtype() -> None:
    s16 = storable_scales(np.array([1.0, 0.1, 3.14159, 0.0]))
    assert s16.dtype == np.float16
    assert np.all(s16.astype(np.float64) >= [1.0, 0.1, 3.14159, 0.0])
    tiny = storable_scales(np.array([1e-7, 1.0]))
    assert tiny.dtype == np.float32 and tiny[0] >= 1e-7
    huge = storable_scales(np.array([1e6]))
    assert huge.dtype == np.float32 and huge[0] >= 1e6
