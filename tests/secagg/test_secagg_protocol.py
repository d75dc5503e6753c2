"""End-to-end rounds: exact sums under dropouts at every stage, aborts, stage order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_harness import (
    Fleet,
    expected_outcome,
    plain_sum,
    random_inputs,
    run_round,
    wire,
)

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg import ClientState, GraphKind, SecAggConfig
from fedge.server.secagg import ServerState

D = 37  # odd on purpose: no chunk or word alignment is assumed


def _seed_of(outcome_transcript: list) -> bytes:
    for direction, _, msg in outcome_transcript:
        if direction == "down" and msg["t"] == "secagg/roster":
            return bytes(msg["seed"])
    raise AssertionError("no roster was sent")


@st.composite
def drop_plans(draw: st.DrawFn, n: int) -> dict[str, set[str]]:
    """Who goes silent at each stage (up to 2 before advertising and before masking)."""
    ids = [f"dev-{i:03d}" for i in range(n)]
    sizes = {"advertise": 2, "share": 1, "masked": 2, "unmask": 1}
    return {
        stage: set(draw(st.lists(st.sampled_from(ids), max_size=size)))
        for stage, size in sizes.items()
    }


def _check_round(config: SecAggConfig, n: int, drops: dict[str, set[str]], seed: int) -> str:
    fleet = Fleet.create(config, n)
    inputs = random_inputs(fleet.ids, config.dimension, seed)
    outcome = run_round(fleet, inputs, drops)
    if not any(m["t"] == "secagg/roster" for _, _, m in outcome.transcript):
        # Aborted before any roster: the model must agree, without needing a graph seed.
        assert expected_outcome(config, fleet.ids, b"", drops) == ("abort", {"advertise"})
        assert outcome.error is not None and "advertised" in str(outcome.error)
        return "abort"
    verdict, detail = expected_outcome(config, fleet.ids, _seed_of(outcome.transcript), drops)
    if verdict == "abort":
        assert outcome.error is not None, f"expected an abort at {detail}"
        assert outcome.server.state is ServerState.ABORTED
        with pytest.raises(SecAggError):
            outcome.server.result()
        return "abort"
    assert outcome.error is None, f"unexpected abort: {outcome.error}"
    assert set(outcome.server.survivors) == detail
    expected = plain_sum(inputs, sorted(detail), config.dimension)
    np.testing.assert_array_equal(outcome.server.result(), expected)
    return "ok"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=4, max_value=9),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_complete_graph_sum_is_exact_under_dropouts(n: int, data: st.DataObject, seed: int) -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE, min_clients=3)
    drops = data.draw(drop_plans(n))
    _check_round(config, n, drops, seed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=10, max_value=16),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_harary_graph_sum_is_exact_under_dropouts(n: int, data: st.DataObject, seed: int) -> None:
    # Few security bits so that k < n - 1 already for a dozen devices.
    config = SecAggConfig("fleet", D, dropout_rate=0.1, security_bits=2, correctness_bits=2)
    k, _ = config.graph_params(n)
    assert k < n - 2, "the test must exercise a sparse graph"
    drops = data.draw(drop_plans(n))
    _check_round(config, n, drops, seed)


def test_no_dropouts_every_device_is_summed() -> None:
    config = SecAggConfig("fleet", D, security_bits=2, correctness_bits=2)
    fleet = Fleet.create(config, 12)
    inputs = random_inputs(fleet.ids, D, 1)
    outcome = run_round(fleet, inputs)
    assert outcome.error is None
    assert outcome.server.survivors == tuple(fleet.ids)
    np.testing.assert_array_equal(outcome.server.result(), plain_sum(inputs, fleet.ids, D))
    assert all(c.state is ClientState.DONE for c in fleet.clients.values())
    report = outcome.server.report
    assert report is not None and report.self_masks == 12 and report.pairwise_masks == 0


def test_weight_travels_inside_the_sum() -> None:
    """Convention: the caller appends the example count as the last ring element."""
    config = SecAggConfig("fleet", 5, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 4)
    inputs = {
        u: np.array([1, 2, 3, 4, 10 * (i + 1)], dtype=np.uint32) for i, u in enumerate(fleet.ids)
    }
    outcome = run_round(fleet, inputs, {"masked": {fleet.ids[0]}})
    assert outcome.error is None
    assert int(outcome.server.result()[-1]) == 20 + 30 + 40


def test_dropped_after_sharing_masks_are_removed() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 7)
    inputs = random_inputs(fleet.ids, D, 2)
    outcome = run_round(fleet, inputs, {"masked": {"dev-001", "dev-004"}})
    assert outcome.error is None
    survivors = [u for u in fleet.ids if u not in ("dev-001", "dev-004")]
    np.testing.assert_array_equal(outcome.server.result(), plain_sum(inputs, survivors, D))
    report = outcome.server.report
    assert report is not None and report.dropped_after_sharing == 2
    assert report.pairwise_masks == 2 * len(survivors)


def test_abort_below_threshold_reveals_nothing() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)  # n=7: t=4
    fleet = Fleet.create(config, 7)
    inputs = random_inputs(fleet.ids, D, 3)
    # Four devices vanish before unmasking: survivors have 2 surviving neighbours < t.
    outcome = run_round(fleet, inputs, {"masked": {"dev-000", "dev-001", "dev-002", "dev-003"}})
    assert outcome.error is not None and "t=4" in str(outcome.error)
    assert outcome.server.state is ServerState.ABORTED
    assert outcome.server.abort_reason is not None
    # No UnmaskRequest was ever produced, so no device revealed any share.
    assert not any(m["t"] == "secagg/unmask-request" for _, _, m in outcome.transcript)
    assert all(c.state is not ClientState.DONE for c in fleet.clients.values())
    with pytest.raises(SecAggError):
        outcome.server.result()


def test_abort_when_unmask_shares_are_too_few() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)  # n=5: t=3
    fleet = Fleet.create(config, 5)
    inputs = random_inputs(fleet.ids, D, 4)
    outcome = run_round(fleet, inputs, {"unmask": {"dev-000", "dev-001", "dev-002"}})
    assert outcome.error is not None and "below threshold" in str(outcome.error)
    with pytest.raises(SecAggError):
        outcome.server.result()


def test_abort_when_too_few_devices_advertise() -> None:
    config = SecAggConfig("fleet", D, min_clients=4)
    fleet = Fleet.create(config, 5)
    outcome = run_round(
        fleet, random_inputs(fleet.ids, D, 5), {"advertise": {"dev-000", "dev-001"}}
    )
    assert outcome.error is not None and "advertised" in str(outcome.error)
    with pytest.raises(SecAggError, match="no stage to close"):
        outcome.server.close_stage()


def test_server_refuses_out_of_order_and_duplicates() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 4)
    server = fleet.server()
    ads = {u: fleet.clients[u].advertise() for u in fleet.ids}
    server.receive("dev-000", wire(ads["dev-000"]))
    with pytest.raises(SecAggError, match="duplicate"):
        server.receive("dev-000", wire(ads["dev-000"]))
    with pytest.raises(SecAggError, match="advertisement of"):
        server.receive("dev-001", wire(ads["dev-002"]))  # someone else's keys
    with pytest.raises(SecAggError, match="not a participant"):
        server.receive("intruder", wire(ads["dev-001"]))
    for u in fleet.ids[1:]:
        server.receive(u, wire(ads[u]))
    assert server.pending() == frozenset()
    rosters = server.close_stage()
    assert server.state is ServerState.SHARE
    with pytest.raises(SecAggError, match="out of order"):
        server.receive("dev-000", wire(ads["dev-000"]))
    shares = {u: fleet.clients[u].share_keys(wire(rosters[u])) for u in fleet.ids}
    x = np.zeros(D, dtype=np.uint32)
    for u in fleet.ids:
        server.receive(u, wire(shares[u]))
    requests = server.close_stage()
    masked = fleet.clients["dev-000"].masked_input(wire(requests["dev-000"]), x)
    with pytest.raises(SecAggError, match="out of order"):
        server.receive("dev-000", wire(shares["dev-000"]))
    server.receive("dev-000", wire(masked))
    assert server.pending() == frozenset(fleet.ids[1:])


def test_server_refuses_wrong_length_masked_input() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 3)
    server = fleet.server()
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].advertise()))
    rosters = server.close_stage()
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].share_keys(wire(rosters[u]))))
    server.close_stage()
    from fedge.edge_client.secagg import MaskedInput

    with pytest.raises(SecAggError, match="expected 37"):
        server.receive("dev-000", MaskedInput("round-1", np.zeros(D + 1, dtype=np.uint32)))


def test_client_refuses_out_of_order_calls_without_failing() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 3)
    client = fleet.clients["dev-000"]
    from fedge.edge_client.secagg import MaskedInputRequest, UnmaskRequest

    with pytest.raises(SecAggError, match="out of order"):
        client.masked_input(MaskedInputRequest("round-1", {}), np.zeros(D, dtype=np.uint32))
    with pytest.raises(SecAggError, match="out of order"):
        client.unmask(UnmaskRequest("round-1", (), ()))
    assert client.state is ClientState.NEW
    client.advertise()
    with pytest.raises(SecAggError, match="out of order"):
        client.advertise()
    assert client.state is ClientState.ADVERTISED


def test_client_checks_its_input_vector() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 3)
    server = fleet.server()
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].advertise()))
    rosters = server.close_stage()
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].share_keys(wire(rosters[u]))))
    requests = server.close_stage()
    with pytest.raises(SecAggError, match="uint32 vector of length 37"):
        fleet.clients["dev-000"].masked_input(wire(requests["dev-000"]), np.zeros(D, np.int64))
    assert fleet.clients["dev-000"].state is ClientState.FAILED
