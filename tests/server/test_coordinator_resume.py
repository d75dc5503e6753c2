"""A restarted server offers the last downlink delta again, so `pred` keeps its prior."""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_client import codec
from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.edge_client.weights import unpack_weights
from fedge.server.aggregator import StreamingMean
from fedge.server.blobs import BlobStore
from fedge.server.coordinator import Coordinator
from fedge.server.job import parse_job_config
from fedge.server.rounds import RoundRun, RoundState
from fedge.server.store import Store


async def _published(topic: str, data: bytes) -> bool:
    return True


def open_coordinator(state: Path, artifact: Path, downlink: str | None) -> Coordinator:
    """A coordinator over the state directory, as a (re)started server builds it."""
    text = (
        f'[job]\nname = "digits"\nfleet = "test"\nartifact = "{artifact}"\nrounds = 5\n'
        f'codec = "{"topk:0.1+q8+pred" if downlink else "topk:0.1+q8"}"\n'
        + (f'downlink = "{downlink}"\n' if downlink else "")
        + "[selection]\ntarget_reports = 2\nmin_reports = 1\n"
    )
    job = parse_job_config(tomllib.loads(text), artifact)
    key = load_or_create_signing_key(state / "signing.key")
    coordinator = Coordinator(
        job, load_artifact(artifact), Store(state / "fedge.db"), BlobStore(state / "blobs"),
        key, "http://127.0.0.1", _published,
    )
    coordinator.restore_or_init()
    return coordinator


def commit_one_round(c: Coordinator, number: int) -> None:
    """Aggregate one device's made-up update into round ``number`` and commit it."""
    rid = c.store.start_round(c.job.name, number, 1, "train", RoundState.SELECTING.value)
    rnd = RoundRun(rid=rid, job_id=c.job.name, number=number, attempt=1, kind="train",
                   round_seed=number)
    rnd.aggregator = StreamingMean(c.shapes, c.job.training.max_example_weight)
    rng = np.random.default_rng(number)
    rnd.aggregator.add([rng.normal(scale=0.05, size=s).astype(np.float32) for s in c.shapes], 10)
    for state in (RoundState.CONFIGURING, RoundState.COLLECTING, RoundState.AGGREGATING):
        rnd.advance(state)
    assert c._aggregate_and_commit(rnd, {"reported": 1, "dropped": 0})


def test_restarted_server_offers_the_same_delta_and_prior(tmp_path: Path, mlp_artifact: Path) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, "q8")
    base = first.weights_sha
    commit_one_round(first, 1)
    before = first.weights_delta
    assert before is not None and before.base_sha == base and before.step is not None
    first.store.close()

    again = open_coordinator(state, mlp_artifact, "q8")
    after = again.weights_delta
    assert after is not None
    assert again.weights_sha == first.weights_sha
    assert (after.base_sha, after.ref.sha256) == (before.base_sha, before.ref.sha256)
    assert after.ref.signature == before.ref.signature  # the same signed blob devices verify
    for a, b in zip(after.step, before.step, strict=True):  # the same prior, bit for bit
        np.testing.assert_array_equal(a, b)
    # The delta still turns the base weights into the restored ones.
    rebuilt = codec.apply_model_delta(
        unpack_weights(again.blobs.get(base), again.shapes), again.blobs.get(after.ref.sha256)
    )
    for a, b in zip(rebuilt, again.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    again.store.close()


def test_restart_without_the_delta_blob_falls_back_to_full_weights(
    tmp_path: Path, mlp_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, "q8")
    commit_one_round(first, 1)
    assert first.weights_delta is not None
    first.blobs.path(first.weights_delta.ref.sha256).unlink()
    first.store.close()
    again = open_coordinator(state, mlp_artifact, "q8")
    assert again.weights_delta is None
    assert "missing from the blob store" in caplog.text
    again.store.close()


def test_jobs_without_a_downlink_record_no_delta(tmp_path: Path, mlp_artifact: Path) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, None)
    commit_one_round(first, 1)
    row = first.store.job("digits")
    assert row is not None and row["delta_sha"] is None and first.weights_delta is None
    first.store.close()


def test_a_store_from_an_older_server_gains_the_delta_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the jobs table as servers before the delta wrote it
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL, "
            "created REAL NOT NULL, updated REAL NOT NULL, committed_round INTEGER NOT NULL "
            "DEFAULT 0, weights_sha TEXT, optimizer_sha TEXT, reason TEXT)"
        )
        conn.execute("INSERT INTO jobs VALUES ('j', '{}', 'running', 0, 0, 2, 'w', NULL, NULL)")
    store = Store(path)
    row = store.job("j")
    assert row is not None and row["committed_round"] == 2
    assert row["delta_sha"] is None and row["delta_base_sha"] is None
    rid = store.start_round("j", 3, 1, "train", "selecting")
    store.commit_round(rid, "j", 3, "a" * 64, None, delta=("d" * 64, "a" * 64))
    row = store.job("j")
    assert row is not None and (row["delta_sha"], row["delta_base_sha"]) == ("d" * 64, "a" * 64)
    store.close()
    Store(path).close()  # opening it again adds nothing twice
