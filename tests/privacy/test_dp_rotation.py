"""Randomized Hadamard rotation: orthonormal, invertible, identical on every device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.linalg import hadamard

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.rotation import fwht, padded_length, random_signs, rotate, unrotate


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_fwht_is_the_normalised_hadamard_matrix(n: int) -> None:
    x = np.random.default_rng(n).normal(size=n)
    np.testing.assert_allclose(fwht(x), hadamard(n) @ x / np.sqrt(n), atol=1e-12)


def test_rotation_round_trip_and_norm() -> None:
    x = np.random.default_rng(1).normal(size=1000)
    y = rotate(x, seed=42)
    assert y.size == 1024 == padded_length(1000)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(unrotate(y, seed=42, dim=1000), x, atol=1e-12)
    assert not np.allclose(unrotate(y, seed=43, dim=1000), x)


def test_rotation_spreads_a_spike() -> None:
    x = np.zeros(4096)
    x[7] = 1.0
    assert np.max(np.abs(rotate(x, seed=5))) == pytest.approx(1 / 64)


def test_signs_are_a_stable_function_of_seed() -> None:
    signs = random_signs(2024, 1000)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    np.testing.assert_array_equal(random_signs(2024, 100), signs[:100])
    np.testing.assert_array_equal(random_signs(2024, 1000), signs)
    assert not np.array_equal(random_signs(2025, 1000), signs)
    assert abs(signs.sum()) < 150
    # The cross-device contract: bit i of PCG64's raw little-endian words -> -1 when set.
    word = int(np.random.PCG64(2024).random_raw(1)[0])
    expected = [-1.0 if (word >> bit) & 1 else 1.0 for bit in range(64)]
    np.testing.assert_array_equal(signs[:64], expected)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fwht(np.ones(6)),
        lambda: fwht(np.ones((4, 4))),
        lambda: padded_length(0),
        lambda: random_signs(-1, 4),
        lambda: unrotate(np.ones(8), seed=1, dim=3),
    ],
)
def test_bad_input_raises(call: Callable[[], object]) -> None:
    with pytest.raises(PrivacyError):
        call()
