"""A restarted server offers the last downlink delta again, so `pred` keeps its prior."""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_client import codec
from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.edge_client.weights import unpack_weights
from fedge.server.aggregation.plain import PlainCollection
from fedge.server.blobs import BlobStore
from fedge.server.coordinator import Coordinator
from fedge.server.job import parse_job_config
from fedge.server.rounds import RoundState
from fedge.server.store import SQLiteStore


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
        job, load_artifact(artifact), SQLiteStore(state / "fedge.db"), BlobStore(state / "blobs"),
        key, "http://127.0.0.1", _published,
    )
    coordinator.restore_or_init()
    return coordinator


def commit_one_round(c: Coordinator, number: int) -> None:
    """Aggregate one device's made-up update into round ``number`` and commit it."""
    rnd = c.engine.start(number, "train")
    active = c.configure(c.train_rounds, rnd, ["dev-1"])
    c.engine.advance(rnd, RoundState.COLLECTING)
    collection = active.collection
    assert isinstance(collection, PlainCollection)
    rng = np.random.default_rng(number)
    collection.sum.add([rng.normal(scale=0.05, size=s).astype(np.float32) for s in c.shapes], 10)
    counts = {"reported": 1, "dropped": 0}
    c.engine.advance(rnd, RoundState.AGGREGATING, **counts)
    assert c.train_rounds.finish(rnd, collection, counts)


def test_restarted_server_offers_the_same_delta_and_prior(tmp_path: Path, mlp_artifact: Path) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, "q8")
    base = first.checkpoints.weights_sha
    commit_one_round(first, 1)
    before = first.checkpoints.delta
    assert before is not None and before.base_sha == base and before.step is not None
    first.store.close()

    again = open_coordinator(state, mlp_artifact, "q8")
    after = again.checkpoints.delta
    assert after is not None
    assert again.checkpoints.weights_sha == first.checkpoints.weights_sha
    assert (after.base_sha, after.ref.sha256) == (before.base_sha, before.ref.sha256)
    assert after.ref.signature == before.ref.signature  # the same signed blob devices verify
    for a, b in zip(after.step, before.step, strict=True):  # the same prior, bit for bit
        np.testing.assert_array_equal(a, b)
    # The delta still turns the base weights into the restored ones.
    rebuilt = codec.apply_model_delta(
        unpack_weights(again.blobs.get(base), again.shapes), again.blobs.get(after.ref.sha256)
    )
    for a, b in zip(rebuilt, again.checkpoints.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    again.store.close()


def test_restart_without_the_delta_blob_falls_back_to_full_weights(
    tmp_path: Path, mlp_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, "q8")
    commit_one_round(first, 1)
    assert first.checkpoints.delta is not None
    first.blobs.path(first.checkpoints.delta.ref.sha256).unlink()
    first.store.close()
    again = open_coordinator(state, mlp_artifact, "q8")
    assert again.checkpoints.delta is None
    assert "missing from the blob store" in caplog.text
    again.store.close()


def test_jobs_without_a_downlink_record_no_delta(tmp_path: Path, mlp_artifact: Path) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, None)
    commit_one_round(first, 1)
    row = first.store.job("digits")
    assert row is not None and row["delta_sha"] is None and first.checkpoints.delta is None
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
    store = SQLiteStore(path)
    row = store.job("j")
    assert row is not None and row["committed_round"] == 2
    assert row["delta_sha"] is None and row["delta_base_sha"] is None
    rid = store.start_round("j", 3, 1, "train", "selecting")
    for state in ("configuring", "collecting", "aggregating"):  # the table's path to a commit
        store.transition(rid, state)
    store.commit_round(rid, "j", 3, "a" * 64, None, delta=("d" * 64, "a" * 64))
    row = store.job("j")
    assert row is not None and (row["delta_sha"], row["delta_base_sha"]) == ("d" * 64, "a" * 64)
    store.close()
    SQLiteStore(path).close()  # opening it again adds nothing twice


def test_resuming_a_job_with_other_settings_is_refused_naming_the_change(
    tmp_path: Path, mlp_artifact: Path
) -> None:
    state = tmp_path / "state"
    first = open_coordinator(state, mlp_artifact, "q8")
    commit_one_round(first, 1)
    first.store.close()
    with pytest.raises(ConfigError) as refused:
        open_coordinator(state, mlp_artifact, "q4")  # the downlink spec changed
    assert "downlink: 'q8' -> 'q4'" in str(refused.value)
    again = open_coordinator(state, mlp_artifact, "q8")  # the same settings resume
    assert again.store.job("digits")["committed_round"] == 1  # type: ignore[index]
    again.store.close()


def test_job_differences_name_every_changed_setting(tmp_path: Path) -> None:
    base = {"job": {"name": "j", "fleet": "f", "artifact": "a", "rounds": 3}}
    one = parse_job_config(base, tmp_path)
    other = parse_job_config(
        {**base, "training": {"lr": 0.5}, "secagg": {"enabled": True, "bits": 12}}, tmp_path
    )
    changes = other.differences(one)
    assert "training.lr: 0.1 -> 0.5" in changes
    assert "secagg.bits: None -> 12" in changes and "secagg.enabled: None -> True" in changes
    assert one.differences(one) == []
