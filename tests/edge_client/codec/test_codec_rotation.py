"""Randomized Hadamard rotation: orthogonal, invertible, seeded, small padding."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.codec.rotation import chunk_sizes, padded_length, rotate, unrotate


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**64 - 1), st.integers(0, 50))
def test_rotation_is_orthogonal_and_inverts(n: int, round_seed: int, section: int) -> None:
    x = np.random.default_rng(n).normal(size=n)
    y = rotate(x, round_seed=round_seed, section=section)
    assert y.size == padded_length(n)
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-12)
    back = unrotate(y, n, round_seed=round_seed, section=section)
    assert np.allclose(back, x, atol=1e-12 * max(1.0, np.abs(x).max()))


def test_rotation_matrix_is_orthogonal() -> None:
    n = 200
    basis = np.stack([rotate(e, round_seed=3, section=0) for e in np.eye(n)])
    assert np.allclose(basis @ basis.T, np.eye(n), atol=1e-12)


def test_padding_and_chunks() -> None:
    assert [padded_length(n) for n in (1, 2, 3, 10, 64, 65, 1000, 100352)] == [
        1,
        2,
        4,
        16,
        64,
        128,
        1024,
        100352,
    ]
    assert chunk_sizes(100352) == [65536, 32768, 2048]
    assert all(sum(chunk_sizes(n)) == padded_length(n) for n in range(1, 2000))


def test_seed_changes_rotation_and_spreads_a_spike() -> None:
    x = np.random.default_rng(0).normal(size=1024)
    a = rotate(x, round_seed=1, section=0)
    assert not np.allclose(a, rotate(x, round_seed=2, section=0))
    assert not np.allclose(a, rotate(x, round_seed=1, section=1))
    spike = np.zeros(1024)
    spike[5] = 1.0
    spread = rotate(spike, round_seed=1, section=0)
    assert np.allclose(np.abs(spread), 1 / 32)  # a spike spreads evenly over the chunk
