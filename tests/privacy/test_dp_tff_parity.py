"""Cross-checks against TFF 0.87's DP aggregators (their DpEvents, noise split and noise scale).

Only the aggregators' TensorFlow queries are run, eagerly: no TFF executor (and so no
`worker_binary` child process) is started; the last test checks that.
"""

from __future__ import annotations

import os
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import differential_privacy as tff_dp

from fedge.edge_client.privacy import parse_dp_spec
from fedge.server.privacy import PrivacyAccountant, central_dp_mean, update_noise_multiplier

# dp-accounting's PLD calls scipy 1.9 code that uses a numpy 1.25 deprecated helper.
pytestmark = pytest.mark.filterwarnings("ignore:np.find_common_type:DeprecationWarning")


def _noised(factory: object, dim: int) -> tuple[np.ndarray, dp_accounting.DpEvent]:
    """Run the factory's DP query once on an all-zero sum; return its output and DpEvent."""
    query = factory._query  # type: ignore[attr-defined]
    global_state = query.initial_global_state()
    sample_state = query.initial_sample_state(tf.TensorSpec([dim], tf.float32))
    result, _, event = query.get_noised_result(sample_state, global_state)
    return np.asarray(result), event


def _epsilon(event: dp_accounting.DpEvent, q: float, rounds: int, method: str) -> float:
    """Epsilon of `rounds` Poisson-sampled rounds of TFF's per-round DpEvent."""
    composed = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, event), rounds
    )
    if method == "rdp":
        accountant: dp_accounting.PrivacyAccountant = dp_accounting.rdp.RdpAccountant()
    else:
        accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    return float(accountant.compose(composed).get_epsilon(1e-5))


def _event_of(event: object) -> dp_accounting.DpEvent:
    """TFF's eager events hold tf scalars; rebuild them with floats for dp-accounting."""
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return dp_accounting.ComposedDpEvent([_event_of(e) for e in event.events])
    assert isinstance(event, dp_accounting.GaussianDpEvent)
    return dp_accounting.GaussianDpEvent(float(event.noise_multiplier))


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_fixed_clip_epsilon_matches_tff_gaussian_fixed(method: str) -> None:
    z, clients, population, clip = 1.25, 50, 5000, 0.5
    factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=z, clients_per_round=float(clients), clip=clip
    )
    _, event = _noised(factory, 4)
    ours = PrivacyAccountant(z, clients / population, 1e-5, method, pld_discretization=1e-3)
    for rounds in (1, 300):
        theirs = _epsilon(_event_of(event), clients / population, rounds, method)
        assert ours.epsilon_after(rounds) == pytest.approx(theirs, rel=1e-5)


def test_central_mean_noise_matches_tff_normalized_query() -> None:
    z, clients, clip, dim = 1.25, 50, 0.5, 100_000
    factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=z, clients_per_round=float(clients), clip=clip
    )
    theirs, _ = _noised(factory, dim)
    ours = central_dp_mean([np.zeros(dim, np.float32)], clip, z, clients)[0]
    expected = z * clip / clients
    assert float(np.std(theirs)) == pytest.approx(expected, rel=0.02)
    assert float(np.std(ours)) == pytest.approx(expected, rel=0.02)


def test_adaptive_noise_split_matches_tff() -> None:
    z, clients = 1.0, 100
    spec = parse_dp_spec(f"central:{z}:0.1:adaptive=0.5")
    bit_noise = spec.bit_noise_for(clients)
    value_z, count_stddev = tff_dp.adaptive_clip_noise_params(z, float(clients))
    assert bit_noise == pytest.approx(count_stddev)
    assert update_noise_multiplier(z, bit_noise) == pytest.approx(value_z, rel=1e-12)


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_adaptive_epsilon_matches_tff_gaussian_adaptive(method: str) -> None:
    """TFF accounts both queries of a round (updates and clipped count); we account z."""
    z, clients, population = 1.0, 100, 20_000
    factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
        noise_multiplier=z,
        clients_per_round=float(clients),
        initial_l2_norm_clip=0.1,
        target_unclipped_quantile=0.5,
        learning_rate=0.2,
    )
    _, event = _noised(factory, 4)
    assert isinstance(event, dp_accounting.ComposedDpEvent)
    ours = PrivacyAccountant(z, clients / population, 1e-5, method, pld_discretization=1e-3)
    q = clients / population
    if method == "pld":
        # PLD takes single Gaussians: compose TFF's pair into the equivalent one.
        combined = sum(float(e.noise_multiplier) ** -2 for e in event.events) ** -0.5
        theirs = _epsilon(dp_accounting.GaussianDpEvent(combined), q, 200, method)
    else:
        theirs = _epsilon(_event_of(event), q, 200, method)
    assert ours.epsilon_after(200) == pytest.approx(theirs, rel=1e-5)


def test_no_tff_worker_process_left() -> None:
    me = str(os.getpid())
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            children.append((stat.parent / "comm").read_text().strip())
    assert "worker_binary" not in children
