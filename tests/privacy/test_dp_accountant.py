"""Accountants: parity with dp-accounting, budget stopping, distributed-DP bounds."""

from __future__ import annotations

import math
from collections.abc import Callable

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy import DistributedNoise, parse_dp_spec, select_distributed_params
from fedge.server.privacy import (
    DistributedPrivacyAccountant,
    PrivacyAccountant,
    accountant_from_spec,
)
from fedge.server.privacy.rdp_bounds import (
    DISTRIBUTED_RDP_ORDERS,
    ddgauss_sum_rdp,
    poisson_subsampled_rdp,
)

# dp-accounting's PLD calls scipy 1.9 code that uses a numpy 1.25 deprecated helper.
pytestmark = pytest.mark.filterwarnings("ignore:np.find_common_type:DeprecationWarning")


def _reference_epsilon(z: float, q: float, rounds: int, delta: float, method: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    if method == "rdp":
        accountant: dp_accounting.PrivacyAccountant = dp_accounting.rdp.RdpAccountant()
    else:
        accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    return float(accountant.compose(event).get_epsilon(delta))


@pytest.mark.parametrize("method", ["rdp", "pld"])
@pytest.mark.parametrize(("z", "q"), [(1.1, 0.01), (0.8, 0.1), (3.0, 1.0)])
def test_matches_dp_accounting(method: str, z: float, q: float) -> None:
    accountant = PrivacyAccountant(z, q, 1e-5, method=method, pld_discretization=1e-3)
    for rounds in (1, 7, 150):
        expected = _reference_epsilon(z, q, rounds, 1e-5, method)
        assert accountant.epsilon_after(rounds) == pytest.approx(expected, rel=1e-9)


def test_step_accumulates_and_pld_is_tighter() -> None:
    rdp = PrivacyAccountant(1.0, 0.02, 1e-6)
    pld = PrivacyAccountant(1.0, 0.02, 1e-6, method="pld", pld_discretization=1e-3)
    assert rdp.epsilon == 0.0 and rdp.rounds == 0
    previous = 0.0
    for _ in range(5):
        current = rdp.step(20)
        assert current > previous
        previous = current
    assert rdp.rounds == 100
    assert rdp.epsilon == rdp.epsilon_after(100)
    pld.step(100)
    assert pld.epsilon < rdp.epsilon


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_job_with_a_budget_stops_at_the_budget(method: str) -> None:
    target = 1.5
    accountant = PrivacyAccountant(1.2, 0.05, 1e-5, method=method, pld_discretization=1e-3)
    allowed = accountant.max_rounds_within(target)
    assert allowed > 1
    while not accountant.would_exceed(target):  # the job loop
        accountant.step()
        assert accountant.rounds <= allowed
    assert accountant.rounds == allowed
    assert accountant.epsilon <= target
    assert accountant.epsilon_after(allowed + 1) > target


def test_budget_edge_cases() -> None:
    tiny = PrivacyAccountant(1.0, 0.1, 1e-5)
    assert tiny.max_rounds_within(1e-3) == 0
    assert tiny.would_exceed(1e-3)
    silent = PrivacyAccountant(0.0, 0.1, 1e-5)
    assert silent.epsilon == 0.0
    assert math.isinf(silent.epsilon_after(1))
    assert silent.max_rounds_within(100.0) == 0
    generous = PrivacyAccountant(50.0, 1e-4, 1e-5)
    assert generous.max_rounds_within(10.0) == 10_000_000


@pytest.mark.parametrize(
    "call",
    [
        lambda: PrivacyAccountant(-1.0, 0.1, 1e-5),
        lambda: PrivacyAccountant(1.0, 0.0, 1e-5),
        lambda: PrivacyAccountant(1.0, 1.5, 1e-5),
        lambda: PrivacyAccountant(1.0, 0.1, 0.0),
        lambda: PrivacyAccountant(1.0, 0.1, 1e-5, method="moments"),
        lambda: PrivacyAccountant(1.0, 0.1, 1e-5).step(-1),
        lambda: PrivacyAccountant(1.0, 0.1, 1e-5).epsilon_after(1.5),  # type: ignore[arg-type]
        lambda: PrivacyAccountant(1.0, 0.1, 1e-5).would_exceed(0.0),
    ],
)
def test_bad_arguments_raise(call: Callable[[], object]) -> None:
    with pytest.raises(PrivacyError):
        call()


@pytest.mark.parametrize(("z", "q"), [(1.0, 0.01), (0.7, 0.1), (2.0, 0.001)])
def test_general_subsampling_bound_is_above_the_exact_gaussian_one(z: float, q: float) -> None:
    orders = DISTRIBUTED_RDP_ORDERS
    general = poisson_subsampled_rdp(orders, lambda a: np.asarray(a, float) / (2 * z * z), q)
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(o) for o in orders])
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    exact = np.asarray(accountant.rdp)
    assert np.all(general >= exact * (1 - 1e-9))
    eps_general = rdp_privacy_accountant.compute_epsilon(orders, 500 * general, 1e-5)[0]
    eps_exact = rdp_privacy_accountant.compute_epsilon(orders, 500 * exact, 1e-5)[0]
    assert eps_exact <= eps_general <= 1.25 * eps_exact


def test_ddgauss_curve_tends_to_the_gaussian_one_for_large_noise() -> None:
    orders = np.arange(2, 10)
    big = ddgauss_sum_rdp(orders, norm_bound=1000.0, local_stddev=250.0, clients=16, dim=4096)
    np.testing.assert_allclose(big, orders * (1000.0 / (4 * 250.0)) ** 2 / 2, rtol=1e-12)
    # with little noise per share the tau slack of summing discrete Gaussians shows up
    small = ddgauss_sum_rdp(orders, norm_bound=4.0, local_stddev=0.3, clients=16, dim=4096)
    assert np.all(small > orders * (4.0 / (4 * 0.3)) ** 2 / 2)


@pytest.mark.parametrize("noise", [DistributedNoise.DGAUSS, DistributedNoise.SKELLAM])
def test_distributed_accountant_is_conservative_but_close(noise: DistributedNoise) -> None:
    params = select_distributed_params(
        clip=1.0, clients=100, dim=100_000, noise_multiplier=1.0, bits=20, noise=noise
    )
    distributed = DistributedPrivacyAccountant(params, 0.01, 1e-5)
    central = PrivacyAccountant(1.0, 0.01, 1e-5)
    assert 0.97 < distributed.effective_noise_multiplier <= 1.0
    for rounds in (1, 100, 1000):
        ratio = distributed.epsilon_after(rounds) / central.epsilon_after(rounds)
        assert 1.0 <= ratio <= 1.3
    fewer = DistributedPrivacyAccountant(params, 0.01, 1e-5, min_clients=70)
    assert fewer.epsilon_after(100) > distributed.epsilon_after(100)
    assert fewer.effective_noise_multiplier == pytest.approx(
        distributed.effective_noise_multiplier * math.sqrt(0.7), rel=0.01
    )
    with pytest.raises(PrivacyError, match="min_clients"):
        DistributedPrivacyAccountant(params, 0.01, 1e-5, min_clients=101)


def test_distributed_budget_and_zero_noise() -> None:
    params = select_distributed_params(clip=1.0, clients=50, dim=5000, noise_multiplier=1.5)
    accountant = DistributedPrivacyAccountant(params, 0.02, 1e-5)
    allowed = accountant.max_rounds_within(2.0)
    assert accountant.epsilon_after(allowed) <= 2.0 < accountant.epsilon_after(allowed + 1)
    silent = select_distributed_params(clip=1.0, clients=50, dim=5000, noise_multiplier=0.0)
    assert math.isinf(DistributedPrivacyAccountant(silent, 0.02, 1e-5).epsilon_after(1))


def test_accountant_from_spec() -> None:
    central = accountant_from_spec(parse_dp_spec("central:1.1:1:accounting=pld"), 100, 10_000)
    assert isinstance(central, PrivacyAccountant)
    assert central.sampling_rate == 0.01
    assert central.method.value == "pld"
    spec = parse_dp_spec("distributed:1.0:0.5:bits=20")
    params = select_distributed_params(0.5, 100, 5000, 1.0, bits=20)
    distributed = accountant_from_spec(spec, 100, 10_000, params, min_clients=80)
    assert isinstance(distributed, DistributedPrivacyAccountant)
    assert distributed.min_clients == 80
    with pytest.raises(PrivacyError, match="needs the distributed DP parameters"):
        accountant_from_spec(spec, 100, 10_000)
    with pytest.raises(PrivacyError, match="do not match"):
        accountant_from_spec(spec, 100, 10_000, select_distributed_params(1.0, 100, 5000, 1.0))
    with pytest.raises(PrivacyError, match="below 1/population"):
        accountant_from_spec(parse_dp_spec("central:1:1"), 10, 200_000)
    with pytest.raises(PrivacyError, match="clients_per_round <= population"):
        accountant_from_spec(parse_dp_spec("central:1:1"), 200, 100)
