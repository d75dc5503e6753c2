"""Top-k keeps the k largest magnitudes; random-k sets are shared per seed and vary by seed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.codec.sparsify import keep_count, random_indices, topk_indices


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2000), st.floats(1e-4, 1.0), st.integers(0, 2**32 - 1))
def test_topk_keeps_exactly_the_k_largest(n: int, fraction: float, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=n)
    k = keep_count(fraction, n)
    idx = topk_indices(x, k)
    assert idx.size == k and np.all(np.diff(idx) > 0)
    kept = np.abs(x[idx])
    dropped = np.delete(np.abs(x), idx)
    assert dropped.size == 0 or kept.min() >= dropped.max()


def test_keep_count_rounds_and_clamps() -> None:
    assert keep_count(0.01, 100) == 1
    assert keep_count(0.01, 100_000) == 1000
    assert keep_count(1e-6, 10) == 1
    assert keep_count(1.0, 7) == 7
    assert keep_count(0.015, 100) == 2


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5000), st.data())
def test_random_k_is_shared_and_seed_dependent(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n - 1))
    seed = data.draw(st.integers(0, 2**64 - 2))
    device = random_indices(n, k, round_seed=seed, section=0)
    server = random_indices(n, k, round_seed=seed, section=0)
    assert np.array_equal(device, server)
    assert device.size == k and len(set(device.tolist())) == k
    assert device.min() >= 0 and device.max() < n and np.all(np.diff(device) > 0)


def test_random_k_differs_across_seeds_and_sections() -> None:
    sets = {
        tuple(random_indices(10_000, 100, round_seed=s, section=sec))
        for s in range(20)
        for sec in range(3)
    }
    assert len(sets) == 60


def test_random_k_is_roughly_uniform() -> None:
    counts = np.zeros(100)
    for seed in range(400):
        counts[random_indices(100, 10, round_seed=seed, section=0)] += 1
    # Each index is picked with probability 0.1: 40 expected, std about 6.
    assert counts.sum() == 4000 and counts.min() > 15 and counts.max() < 65


def test_random_k_matches_reference_construction() -> None:
    """The set is the k smallest PCG64 words (SeedSequence([seed, 1, section])), a stream numpy
    keeps stable across versions, so devices and server on different numpy versions agree."""
    n, k = 1000, 25
    words = np.random.PCG64(np.random.SeedSequence([42, 1, 3])).random_raw(n)
    high = [int(w) >> 10 for w in words]  # 10 = bit length of n - 1
    reference = sorted(sorted(range(n), key=lambda i: (high[i], i))[:k])
    assert random_indices(n, k, round_seed=42, section=3).tolist() == reference
