"""Integer noise samplers against their exact distributions (chi-square) and their scale."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy import discrete_gaussian, discrete_laplace, skellam

N = 200_000
# scipy 1.9's distributions call a numpy 1.25 deprecated helper; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:np.find_common_type:DeprecationWarning")


def _chi_square_p(samples: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    """p-value of samples vs pmf on `support`, with the mass outside lumped into one bin."""
    observed = np.array([(samples == value).sum() for value in support], dtype=np.float64)
    expected = pmf * samples.size
    keep = expected >= 5
    observed_tail = samples.size - observed[keep].sum()
    expected_tail = samples.size - expected[keep].sum()
    obs = np.append(observed[keep], observed_tail)
    exp = np.append(expected[keep], expected_tail)
    if expected_tail < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def _discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    wide = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    normaliser = np.exp(-(wide.astype(np.float64) ** 2) / (2 * sigma * sigma)).sum()
    return np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma * sigma)) / normaliser


@pytest.mark.parametrize("sigma", [0.6, 2.5, 7.0])
def test_discrete_gaussian_matches_exact_pmf(sigma: float) -> None:
    samples = discrete_gaussian(sigma, N, np.random.default_rng(11))
    assert samples.dtype == np.int64
    support = np.arange(-int(8 * sigma) - 2, int(8 * sigma) + 3)
    assert _chi_square_p(samples, _discrete_gaussian_pmf(sigma, support), support) > 1e-4


def test_chi_square_rejects_a_rounded_continuous_gaussian() -> None:
    """Negative control: the pmf test tells a rounded N(0, sigma^2) from N_Z(0, sigma^2)."""
    sigma = 0.6
    rounded = np.rint(np.random.default_rng(12).normal(0, sigma, N)).astype(np.int64)
    support = np.arange(-8, 9)
    assert _chi_square_p(rounded, _discrete_gaussian_pmf(sigma, support), support) < 1e-6


@pytest.mark.parametrize("sigma", [3.0, 150.0, 2.0e6])
def test_discrete_gaussian_scale(sigma: float) -> None:
    samples = discrete_gaussian(sigma, N, np.random.default_rng(13)).astype(np.float64)
    assert samples.std() == pytest.approx(sigma, rel=0.02)
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(N)


def test_discrete_laplace_matches_exact_pmf() -> None:
    scale = 3.0
    samples = discrete_laplace(scale, N, np.random.default_rng(14))
    support = np.arange(-40, 41)
    ratio = math.exp(-1 / scale)
    pmf = (1 - ratio) / (1 + ratio) * ratio ** np.abs(support)
    assert _chi_square_p(samples, pmf, support) > 1e-4


def test_skellam_matches_exact_pmf_and_scale() -> None:
    variance = 18.0
    samples = skellam(variance, N, np.random.default_rng(15))
    support = np.arange(-40, 41)
    pmf = stats.skellam.pmf(support, variance / 2, variance / 2)
    assert _chi_square_p(samples, pmf, support) > 1e-4
    big = skellam(1e10, N, np.random.default_rng(16)).astype(np.float64)
    assert big.std() == pytest.approx(1e5, rel=0.02)


def test_zero_noise_and_empty() -> None:
    assert not discrete_gaussian(0.0, 10).any()
    assert not skellam(0.0, 10).any()
    assert discrete_gaussian(2.0, 0).size == 0


def test_default_generator_is_random() -> None:
    assert not np.array_equal(discrete_gaussian(100.0, 64), discrete_gaussian(100.0, 64))


@pytest.mark.parametrize(
    "call",
    [
        lambda: discrete_gaussian(-1.0, 3),
        lambda: discrete_gaussian(float("inf"), 3),
        lambda: discrete_gaussian(1.0, -3),
        lambda: discrete_laplace(0.0, 3),
        lambda: skellam(-2.0, 3),
        lambda: skellam(2.0**42, 3),
    ],
)
def test_bad_parameters_raise(call: Callable[[], object]) -> None:
    with pytest.raises(PrivacyError):
        call()
