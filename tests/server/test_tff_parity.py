"""Parity with TensorFlow Federated: 3 rounds of fedge FedAvg equal TFF's build_weighted_fed_avg."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fedge_testing import DeviceFleet, MosquittoProcess, device_configs, iid_shards, start_server

from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.edge_client.trainer import LocalTrainer
from fedge.server.settings import ServerSettings
from fedge.tools.bench.tff_parity import (
    ParitySetup,
    committed_round_weights,
    max_abs_diff,
    parity_job,
    stop_tff_workers,
    tff_fedavg,
)

SETUP = ParitySetup(devices=10, rounds=3, epochs=2, client_lr=0.1, server_lr=1.0)
TOLERANCE = 1e-4


@pytest.fixture
def tff_workers_stopped() -> Iterator[None]:
    """Stop the ``worker_binary`` child process TFF leaves running."""
    yield
    stop_tff_workers()


def run_fedge(tmp_path: Path, broker_url: str, artifact: Path,
              shards: list[tuple[np.ndarray, np.ndarray]]) -> tuple[str, Path]:
    """Run the parity job with a real server and 10 real agents; return (status, state dir)."""
    job = parity_job(artifact, SETUP, fleet="test")
    assert max(len(y) for _, y in shards) < job.training.max_example_weight
    state = tmp_path / "server"
    key_file = state / "signing.key"
    load_or_create_signing_key(key_file)
    srv = start_server(job, ServerSettings(state_dir=state, broker_url=broker_url, http_port=0))
    configs = device_configs(tmp_path / "devices", SETUP.devices, broker_url,
                             key_file.with_suffix(".pub"), shards)
    fleet = DeviceFleet(configs, key_file.with_suffix(".pub"))
    fleet.start()
    try:
        status = srv.wait(timeout_s=120)
    finally:
        fleet.stop()
        srv.loop.close()
    return status, state


def test_three_fedavg_rounds_match_tff(tmp_path: Path, mlp_artifact: Path, digits: tuple,
                                       mosquitto: MosquittoProcess,
                                       tff_workers_stopped: None) -> None:
    x_tr, y_tr, _, _ = digits
    shards = iid_shards(x_tr, y_tr, SETUP.devices)
    # Shard sizes (134, 135) are not multiples of the batch size: the masked last batch counts.
    assert any(len(y) % 32 for _, y in shards)
    artifact = load_artifact(mlp_artifact)
    initial = LocalTrainer(artifact).get_weights()
    shapes = [tuple(t.shape) for t in artifact.manifest.tensors]

    status, state = run_fedge(tmp_path, mosquitto.url, mlp_artifact, shards)
    assert status == "finished"
    fedge = committed_round_weights(state, "parity", shapes)
    assert len(fedge) == SETUP.rounds

    tff = tff_fedavg(initial, shards, SETUP, artifact.manifest.batch_size)
    assert len(tff) == SETUP.rounds

    # Every round moves the global model far more than the tolerance, so each comparison counts.
    steps = [max_abs_diff(b, a) for a, b in zip([initial, *tff], tff, strict=False)]
    diffs = [max_abs_diff(f, t) for f, t in zip(fedge, tff, strict=True)]
    print(f"max |fedge - TFF| per round: {diffs}; max change per round: {steps}")
    assert all(s > 100 * TOLERANCE for s in steps), steps
    assert all(d <= TOLERANCE for d in diffs), diffs
