"""Streaming fixed-point aggregation: order-independent, accurate, refusing bad updates whole."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.edge_client.errors import CodecError
from fedge.server.aggregator import StreamingMean

SHAPES = [(3,), (2, 2), (0,)]
MAX_WEIGHT = 100.0

VALUES = st.floats(-10.0, 10.0, width=32, allow_subnormal=True)
DELTA = st.tuples(*(hnp.arrays(np.float32, s, elements=VALUES) for s in SHAPES)).map(list)
UPDATES = st.lists(st.tuples(DELTA, st.integers(-5, 500)), min_size=1, max_size=8)


def aggregate(updates: list[tuple[list[np.ndarray], int]]) -> StreamingMean:
    agg = StreamingMean(SHAPES, MAX_WEIGHT)
    for delta, examples in updates:
        agg.add(delta, examples)
    return agg


def state(agg: StreamingMean) -> tuple[list[bytes], float, int]:
    return [s.tobytes() for s in agg.sums()], agg.total_weight, agg.count


@settings(max_examples=150, deadline=None)
@given(data=st.data(), updates=UPDATES)
def test_any_arrival_order_gives_bit_identical_results(data: st.DataObject,
                                                       updates: list[tuple[list[np.ndarray], int]]
                                                       ) -> None:
    order = data.draw(st.permutations(range(len(updates))))
    a, b = aggregate(updates), aggregate([updates[i] for i in order])
    assert state(a) == state(b)
    assert [m.tobytes() for m in a.mean()] == [m.tobytes() for m in b.mean()]


@settings(max_examples=150, deadline=None)
@given(updates=UPDATES)
def test_mean_matches_float64_weighted_mean(updates: list[tuple[list[np.ndarray], int]]) -> None:
    weights = [min(max(ex, 1), MAX_WEIGHT) for _, ex in updates]
    total = sum(weights)
    agg = aggregate(updates)
    assert agg.total_weight == total and agg.count == len(updates)
    for i, got in enumerate(agg.mean()):
        want = sum(w * d[i].astype(np.float64) for (d, _), w in zip(updates, weights, strict=True))
        assert got.dtype == np.float32 and got.shape == SHAPES[i]
        np.testing.assert_allclose(got, want / total, rtol=0, atol=1e-6)


def test_add_returns_the_capped_weight() -> None:
    agg = StreamingMean([(1,)], max_weight=50)
    assert agg.add([np.ones(1, np.float32)], 0) == 1.0
    assert agg.add([np.ones(1, np.float32)], 20) == 20.0
    assert agg.add([np.ones(1, np.float32)], 10_000) == 50.0
    assert agg.total_weight == 71.0


def test_integer_valued_sums_are_exact() -> None:
    agg = StreamingMean([(4,)], max_weight=1000)
    for k in range(1, 6):
        agg.add([np.array([k, -k, 1000 * k, 0], np.float32)], k)
    sums = agg.sums()[0]
    assert sums.tolist() == [55.0, -55.0, 55000.0, 0.0]


def refused(agg: StreamingMean, delta: list[np.ndarray], examples: int, match: str) -> None:
    before = state(agg)
    with pytest.raises(CodecError, match=match):
        agg.add(delta, examples)
    assert state(agg) == before


def good() -> list[np.ndarray]:
    return [np.full(s, 0.25, np.float32) for s in SHAPES]


@pytest.mark.parametrize("bad, match", [
    ([np.zeros(3, np.float32)], "update has 1 tensors, expected 3"),
    ([np.zeros(3, np.float32), np.zeros((2, 3), np.float32), np.zeros(0, np.float32)], "shape"),
    ([np.zeros(3, np.float32), np.zeros((2, 2), np.float32), np.zeros(1, np.float32)], "shape"),
    ([np.zeros(3, np.float32), np.array([[0, 0], [0, np.nan]], np.float32),
      np.zeros(0, np.float32)], "NaN or infinity"),
    ([np.array([0, -np.inf, 0], np.float32), np.zeros((2, 2), np.float32),
      np.zeros(0, np.float32)], "NaN or infinity"),
    ([np.array([3e11, 0, 0], np.float32), np.zeros((2, 2), np.float32),
      np.zeros(0, np.float32)], "too large"),
])
def test_bad_update_is_refused_and_leaves_the_sum_unchanged(bad: list[np.ndarray],
                                                             match: str) -> None:
    agg = StreamingMean(SHAPES, MAX_WEIGHT)
    agg.add(good(), 10)
    refused(agg, bad, 10, match)
    agg.add(good(), 30)  # still usable afterwards
    np.testing.assert_allclose(agg.mean()[0], 0.25)


def test_overflow_is_refused_before_the_running_sum_wraps() -> None:
    agg = StreamingMean([(2,)], max_weight=100)
    big = [np.array([1e9, -1e9], np.float32)]
    accepted = 0
    for _ in range(10):  # each adds 1e11 (value x weight); the capacity is 2^38 ~ 2.7e11
        try:
            agg.add(big, 100)
            accepted += 1
        except CodecError as exc:
            assert "too large" in str(exc)
            break
    assert accepted == 2
    sums = agg.sums()[0]
    assert sums.tolist() == [2e11, -2e11]  # no wrap-around of the int64 sum
    refused(agg, big, 100, "too large")


def test_mean_of_nothing_is_an_error() -> None:
    with pytest.raises(CodecError, match="no updates"):
        StreamingMean(SHAPES, MAX_WEIGHT).mean()
