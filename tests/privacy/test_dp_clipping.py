"""Device-side L2 clipping: bound, identity below the clip, the adaptive bit, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy import clip_update, l2_norm

_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(min_value=-1e3, max_value=1e3, width=32),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_arrays, min_size=1, max_size=4), st.floats(min_value=1e-3, max_value=1e3))
def test_norm_after_clipping_is_at_most_clip(update: list[np.ndarray], clip: float) -> None:
    result = clip_update(update, clip)
    assert l2_norm(result.arrays) <= clip
    assert [a.shape for a in result.arrays] == [a.shape for a in update]
    assert all(a.dtype == np.float32 for a in result.arrays)
    assert result.within_clip == (result.norm <= clip)
    if result.within_clip:
        for before, after in zip(update, result.arrays, strict=True):
            np.testing.assert_array_equal(before, after)
    else:
        # Clipping only scales: the direction is kept.
        flat_before = np.concatenate([a.ravel() for a in update]).astype(np.float64)
        flat_after = np.concatenate([a.ravel() for a in result.arrays]).astype(np.float64)
        cosine = (
            flat_before @ flat_after / (np.linalg.norm(flat_before) * np.linalg.norm(flat_after))
        )
        assert cosine > 1 - 1e-6
        assert l2_norm(result.arrays) > clip * (1 - 1e-5)


def test_norm_is_joint_over_arrays() -> None:
    update = [np.full(3, 1.0, np.float32), np.full((2, 2), 2.0, np.float32)]
    assert l2_norm(update) == pytest.approx(np.sqrt(3 + 16))
    result = clip_update(update, 1.0)
    assert not result.within_clip
    assert result.norm == pytest.approx(np.sqrt(19))
    # Each array shrinks by the same factor.
    np.testing.assert_allclose(result.arrays[1] / result.arrays[0][0], 2.0, rtol=1e-6)


def test_float64_input_just_under_clip_stays_under_after_cast() -> None:
    rng = np.random.default_rng(3)
    update = [rng.normal(size=1000)]
    clip = float(np.linalg.norm(update[0]))
    result = clip_update(update, clip)
    assert l2_norm(result.arrays) <= clip


@pytest.mark.parametrize(
    ("update", "clip", "fragment"),
    [
        ([], 1.0, "no arrays"),
        ([np.array([1.0, np.nan], np.float32)], 1.0, "NaN or infinite"),
        ([np.array([np.inf], np.float32)], 1.0, "NaN or infinite"),
        ([np.array([1, 2], np.int32)], 1.0, "expected float"),
        ([np.ones(2, np.float32)], 0.0, "clip norm"),
        ([np.ones(2, np.float32)], float("nan"), "clip norm"),
    ],
)
def test_bad_input_raises(update: list[np.ndarray], clip: float, fragment: str) -> None:
    with pytest.raises(PrivacyError) as info:
        clip_update(update, clip)
    assert fragment in str(info.value)
