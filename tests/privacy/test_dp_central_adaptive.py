"""Central Gaussian noise with a fixed denominator, and adaptive quantile clipping."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy import parse_dp_spec
from fedge.server.privacy import (
    AdaptiveClipper,
    add_gaussian_noise,
    central_dp_mean,
    update_noise_multiplier,
)


def test_central_noise_has_the_requested_scale() -> None:
    total: list[np.ndarray] = [np.zeros((300, 300), np.float32), np.zeros(110_000, np.float64)]
    noisy = add_gaussian_noise(total, stddev=0.7, rng=np.random.default_rng(1))
    assert [a.dtype for a in noisy] == [np.float32, np.float64]
    assert float(np.std(noisy[0])) == pytest.approx(0.7, rel=0.02)
    assert float(np.std(noisy[1])) == pytest.approx(0.7, rel=0.02)
    assert not total[0].any()  # the input is not modified


def test_central_mean_divides_by_the_expected_clients() -> None:
    rng = np.random.default_rng(2)
    clipped_sum = [np.full(200_000, 30.0, np.float32)]
    mean = central_dp_mean(
        clipped_sum, clip=2.0, noise_multiplier=1.5, expected_clients=50, rng=rng
    )
    assert float(np.mean(mean[0])) == pytest.approx(30.0 / 50, abs=0.001)
    assert float(np.std(mean[0])) == pytest.approx(1.5 * 2.0 / 50, rel=0.02)
    exact = central_dp_mean(clipped_sum, clip=2.0, noise_multiplier=0.0, expected_clients=40)
    np.testing.assert_allclose(exact[0], 0.75)


@pytest.mark.parametrize(
    "call",
    [
        lambda: add_gaussian_noise([np.zeros(3)], -1.0),
        lambda: add_gaussian_noise([np.zeros(3, np.int32)], 1.0),
        lambda: central_dp_mean([np.zeros(3)], clip=0.0, noise_multiplier=1.0, expected_clients=1),
        lambda: central_dp_mean([np.zeros(3)], clip=1.0, noise_multiplier=-1, expected_clients=1),
        lambda: central_dp_mean([np.zeros(3)], clip=1.0, noise_multiplier=1.0, expected_clients=0),
    ],
)
def test_central_bad_input_raises(call: Callable[[], object]) -> None:
    with pytest.raises(PrivacyError):
        call()


def test_update_noise_multiplier_formula() -> None:
    z, bit_noise = 1.0, 5.0
    z_delta = update_noise_multiplier(z, bit_noise)
    assert z_delta == pytest.approx((1.0 - 0.01) ** -0.5)
    # recombining the two Gaussian queries gives back the total noise multiplier
    assert (z_delta**-2 + (2 * bit_noise) ** -2) ** -0.5 == pytest.approx(z)
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    with pytest.raises(PrivacyError, match="need 2\\*bit_noise > z"):
        update_noise_multiplier(2.0, 1.0)


def _run_adaptive(
    clipper: AdaptiveClipper, rounds: int, clients: int, seed: int
) -> tuple[list[float], np.random.Generator]:
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(rounds):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=clients)
        under = int(np.sum(norms <= clipper.clip))
        history.append(clipper.update(under, clients, rng=rng))
    return history, rng


@pytest.mark.parametrize(("quantile", "start"), [(0.5, 0.05), (0.5, 20.0), (0.8, 0.2)])
def test_adaptive_clip_converges_to_the_target_quantile(quantile: float, start: float) -> None:
    spec = parse_dp_spec(f"central:1.0:{start}:adaptive={quantile}")
    clipper = AdaptiveClipper.from_spec(spec, expected_clients=100)
    assert clipper.bit_noise == 5.0
    history, _ = _run_adaptive(clipper, rounds=200, clients=100, seed=int(quantile * 10))
    true_quantile = math.exp(0.5 * {0.5: 0.0, 0.8: 0.8416212335729143}[quantile])
    settled = float(np.exp(np.mean(np.log(history[-60:]))))
    assert settled == pytest.approx(true_quantile, rel=0.12)
    # it moves monotonically toward the target while far from it
    first = history[:10]
    assert all(
        (b - a) * (true_quantile - start) > 0 for a, b in zip(first, first[1:], strict=False)
    )


def test_adaptive_step_is_geometric() -> None:
    clipper = AdaptiveClipper(1.0, 0.5, 0.2, bit_noise=0.0, expected_clients=10)
    assert clipper.update(10, 10) == pytest.approx(math.exp(-0.2 * 0.5))
    assert clipper.last_fraction == 1.0
    assert clipper.update(0, 10) == pytest.approx(1.0)
    # fewer reports than expected: the fixed denominator pulls the fraction toward 1/2
    clipper.update(5, 5)
    assert clipper.last_fraction == pytest.approx(0.75)


def test_adaptive_resume_and_bad_input() -> None:
    spec = parse_dp_spec("central:1.0:0.5:adaptive=0.5")
    assert AdaptiveClipper.from_spec(spec, 50, clip=2.5).clip == 2.5
    with pytest.raises(PrivacyError, match="no adaptive"):
        AdaptiveClipper.from_spec(parse_dp_spec("central:1:1"), 50)
    clipper = AdaptiveClipper.from_spec(spec, 50)
    with pytest.raises(PrivacyError, match="within_clip must be in"):
        clipper.update(6, 5)
    with pytest.raises(PrivacyError, match="reports must be"):
        clipper.update(0, -1)
    for bad in [(0.0, 0.5, 0.2, 1.0, 10), (1.0, 1.0, 0.2, 1.0, 10), (1.0, 0.5, 0.0, 1.0, 10)]:
        with pytest.raises(PrivacyError):
            AdaptiveClipper(*bad)
