"""SQLite store (WAL): persisted transitions, atomic commits, crash recovery; the round table,
which the store enforces too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedge.server.rounds import (
    TRANSITIONS,
    IllegalTransition,
    ParticipantReport,
    RoundRun,
    RoundState,
)
from fedge.server.store import SQLiteStore, Store

R = RoundState


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "fedge.db"


def sql(db: Path, statement: str) -> list[dict[str, object]]:
    """Run ``statement`` on a connection of the test's own (the store keeps SQL to itself)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(statement).fetchall()]
    finally:
        conn.close()


def test_database_runs_in_wal_mode(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        assert sql(db, "PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    finally:
        store.close()


def run_round_to(store: Store, job: str, rnd: int, states: list[str]) -> int:
    rid = store.start_round(job, rnd, store.attempts(job, "train", rnd) + 1, "train", "selecting")
    for state in states:
        store.transition(rid, state)
    return rid


def test_transitions_and_fields_persist_across_reopening(db: Path) -> None:
    store = SQLiteStore(db)
    store.create_job("j", {"rounds": 3})
    rid = store.start_round("j", 1, 1, "train", "selecting")
    store.transition(rid, "configuring", selected=4)
    store.transition(rid, "collecting")
    store.transition(
        rid, "failed", reason="only 1 of the minimum 3 reported", reported=1, dropped=3
    )
    store.close()

    store = SQLiteStore(db)
    try:
        row = store.round_row(rid)
        assert row is not None
        assert (row["state"], row["selected"], row["reported"], row["dropped"]) == (
            "failed",
            4,
            1,
            3,
        )
        assert row["reason"] == "only 1 of the minimum 3 reported" and row["ended"] is not None
        trail = store.transitions(rid)
        assert [t["state"] for t in trail] == ["selecting", "configuring", "collecting", "failed"]
        assert trail[-1]["reason"] == "only 1 of the minimum 3 reported"
        assert store.job("j")["config"] == {"rounds": 3}  # type: ignore[index]
        assert store.attempts("j", "train", 1) == 1 and store.attempts("j", "train", 2) == 0
    finally:
        store.close()


def test_commit_round_moves_the_checkpoint_with_the_round(db: Path) -> None:
    store = SQLiteStore(db)
    store.create_job("j", {})
    rid = run_round_to(store, "j", 1, ["configuring", "collecting", "aggregating"])
    store.commit_round(rid, "j", 1, "a" * 64, "b" * 64, reported=5, eval_accuracy=0.9)
    store.close()

    store = SQLiteStore(db)
    try:
        job = store.job("j")
        assert job is not None
        assert (job["committed_round"], job["weights_sha"], job["optimizer_sha"]) == (
            1,
            "a" * 64,
            "b" * 64,
        )
        row = store.round_row(rid)
        assert row is not None
        assert (row["state"], row["weights_sha"], row["reported"], row["eval_accuracy"]) == (
            "committed",
            "a" * 64,
            5,
            0.9,
        )
        assert sql(db, "SELECT job_id, round, weights_sha FROM checkpoints") == [
            {"job_id": "j", "round": 1, "weights_sha": "a" * 64}
        ]
        assert store.transitions(rid)[-1]["state"] == "committed"
    finally:
        store.close()


def snapshot(db: Path) -> dict[str, list[dict[str, object]]]:
    return {
        t: sql(db, f"SELECT * FROM {t}")
        for t in ("jobs", "rounds", "round_transitions", "checkpoints")
    }


def test_commit_round_is_all_or_nothing(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        store.create_job("j", {})
        rid = run_round_to(store, "j", 1, ["configuring", "collecting", "aggregating"])
        before = snapshot(db)
        # The last statement of the commit (moving the job's pointer) fails ...
        sql(
            db,
            "CREATE TRIGGER no_pointer BEFORE UPDATE OF committed_round ON jobs "
            "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END",
        )
        with pytest.raises(sqlite3.DatabaseError, match="disk trouble"):
            store.commit_round(rid, "j", 1, "a" * 64, None, reported=5)
        # ... so the round is not committed and no checkpoint row exists either.
        assert snapshot(db) == before
        sql(db, "DROP TRIGGER no_pointer")
        # a failure in the first statement (an unknown column) also leaves everything as it was
        with pytest.raises(sqlite3.OperationalError):
            store.commit_round(rid, "j", 1, "a" * 64, None, no_such_column=1)
        assert snapshot(db) == before
        store.commit_round(rid, "j", 1, "a" * 64, None)  # and the store still works
        assert store.job("j")["committed_round"] == 1  # type: ignore[index]
    finally:
        store.close()


def test_transaction_rolls_back_on_error(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        with pytest.raises(RuntimeError):
            with store._transaction() as c:  # the implementation's own transaction
                c.execute("INSERT INTO rejections VALUES (1, 'd', 't', 'r')")
                raise RuntimeError("boom")
        assert sql(db, "SELECT * FROM rejections") == []
    finally:
        store.close()


def test_fail_unfinished_rounds_after_a_crash(db: Path) -> None:
    store = SQLiteStore(db)
    store.create_job("j", {})
    store.create_job("other", {})
    done = run_round_to(store, "j", 1, ["configuring", "collecting", "aggregating"])
    store.commit_round(done, "j", 1, "a" * 64, None)
    failed = run_round_to(store, "j", 2, ["failed"])
    open_a = run_round_to(store, "j", 2, ["configuring", "collecting"])
    open_b = run_round_to(store, "j", 3, [])
    elsewhere = run_round_to(store, "other", 1, ["configuring"])
    store.close()  # the "crash"

    store = SQLiteStore(db)
    try:
        assert store.fail_unfinished_rounds("j", "server restarted mid-round") == 2
        state = {r["rid"]: r for r in store.rounds("j")}
        assert state[done]["state"] == "committed" and state[failed]["reason"] is None
        for rid in (open_a, open_b):
            assert state[rid]["state"] == "failed"
            assert state[rid]["reason"] == "server restarted mid-round"
            assert state[rid]["ended"] is not None
            assert store.transitions(rid)[-1]["state"] == "failed"
        assert store.round_row(elsewhere)["state"] == "configuring"  # type: ignore[index]
        assert store.fail_unfinished_rounds("j", "again") == 0
        assert [r["kind"] for r in store.rounds("j", kind="train")] == ["train"] * 4
        assert store.rounds("j", kind="evaluate") == []
    finally:
        store.close()


def test_a_second_connection_sees_committed_state(db: Path) -> None:
    writer, reader = SQLiteStore(db), None
    try:
        writer.create_job("j", {})
        rid = run_round_to(writer, "j", 1, ["configuring", "collecting", "aggregating"])
        reader = SQLiteStore(db)
        assert reader.job("j")["committed_round"] == 0  # type: ignore[index]
        writer.commit_round(rid, "j", 1, "c" * 64, None)
        assert reader.job("j")["committed_round"] == 1  # type: ignore[index]
    finally:
        writer.close()
        if reader is not None:
            reader.close()


def test_devices_participants_and_rejections(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        store.upsert_device(
            "dev-1",
            "f",
            online=True,
            profile="pi4",
            runtime="tflite 2.14",
            eligibility={"battery": 0.5},
            identity_key=b"k" * 32,
        )
        store.upsert_device("dev-2", "f")
        store.upsert_device("dev-1", "f", online=False)
        devices = {d["id"]: d for d in store.devices().items}
        assert devices["dev-1"]["online"] == 0 and devices["dev-1"]["profile"] == "pi4"
        assert devices["dev-1"]["eligibility"] == '{"battery": 0.5}'
        assert store.device_identity("dev-1") == b"k" * 32
        assert store.device_identity("dev-2") is None and store.device_identity("x") is None

        rid = run_round_to(store, "j", 1, ["configuring"])
        store.set_participants(rid, ["dev-1", "dev-2"])
        store.set_participant(rid, "dev-1", "reported", examples=10, loss=0.5, uplink_bytes=99)
        store.set_participant(rid, "dev-2", "dropped", reason="no report by deadline")
        parts = {p["device_id"]: p for p in store.participants(rid)}
        assert (
            parts["dev-1"]["status"],
            parts["dev-1"]["examples"],
            parts["dev-1"]["uplink_bytes"],
        ) == ("reported", 10, 99)
        assert parts["dev-2"]["reason"] == "no report by deadline"
        counts = {
            d["id"]: (d["rounds_reported"], d["rounds_dropped"]) for d in store.devices().items
        }
        assert counts == {"dev-1": (1, 0), "dev-2": (0, 1)}

        store.record_rejection("dev-2", "fedge/v1/f/dev/dev-2/up", "replayed")
        store.record_rejection(None, "fedge/v1/f/dev/x/up", "not msgpack")
        assert [r["reason"] for r in sql(db, "SELECT reason FROM rejections")] == [
            "replayed",
            "not msgpack",
        ]
        assert sql(db, "SELECT rejected_messages FROM devices WHERE id='dev-2'") == [
            {"rejected_messages": 1}
        ]
    finally:
        store.close()


# --- the store enforces the round table ---------------------------------------------------


def round_in(store: Store, state: RoundState) -> int:
    """A new round of job "j", moved along legal transitions until it is in ``state``."""
    path = [R.SELECTING, R.CONFIGURING, R.COLLECTING, R.AGGREGATING, R.COMMITTED]
    steps = [R.FAILED] if state == R.FAILED else path[1 : path.index(state) + 1]
    return run_round_to(store, "j", len(store.rounds("j")) + 1, [s.value for s in steps])


def test_transition_refuses_what_the_table_does_not_allow(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        store.create_job("j", {})
        for src in RoundState:
            for dst in RoundState:
                rid = round_in(store, src)
                trail = store.transitions(rid)
                if dst in TRANSITIONS[src]:
                    store.transition(rid, dst.value)
                    assert store.round_row(rid)["state"] == dst.value  # type: ignore[index]
                    continue
                with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
                    store.transition(rid, dst.value, reason="should not stick", reported=9)
                row = store.round_row(rid)
                assert row is not None and row["state"] == src.value and row["reported"] == 0
                assert row["reason"] is None and store.transitions(rid) == trail
        with pytest.raises(IllegalTransition, match="no round with rid 999"):
            store.transition(999, "configuring")
        with pytest.raises(IllegalTransition, match="unknown round state 'paused'"):
            store.transition(round_in(store, R.SELECTING), "paused")
    finally:
        store.close()


def test_commit_round_only_from_aggregating(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        store.create_job("j", {})
        for src in (R.SELECTING, R.CONFIGURING, R.COLLECTING, R.COMMITTED, R.FAILED):
            rid = round_in(store, src)
            before = snapshot(db)
            with pytest.raises(IllegalTransition, match=f"{src.value} -> committed"):
                store.commit_round(rid, "j", 1, "a" * 64, None, reported=5)
            assert snapshot(db) == before  # no checkpoint, no pointer move, no transition
        rid = round_in(store, R.AGGREGATING)
        store.commit_round(rid, "j", 7, "a" * 64, None)
        assert store.job("j")["committed_round"] == 7  # type: ignore[index]
        assert store.checkpoint_weights("j", 7) == "a" * 64
    finally:
        store.close()


def test_rounds_start_only_in_selecting_and_update_round_never_moves_state(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        store.create_job("j", {})
        for state in ("configuring", "committed", "paused"):
            with pytest.raises(IllegalTransition):
                store.start_round("j", 1, 1, "train", state)
        assert store.rounds("j") == [] and sql(db, "SELECT * FROM round_transitions") == []
        rid = store.start_round("j", 1, 1, "train")
        assert store.round_row(rid)["state"] == "selecting"  # type: ignore[index]
        with pytest.raises(IllegalTransition, match="use transition"):
            store.update_round(rid, state="committed")
        store.update_round(rid, refused=2)
        row = store.round_row(rid)
        assert row is not None and (row["state"], row["refused"]) == ("selecting", 2)
    finally:
        store.close()


# --- the in-memory round state machine ----------------------------------------------------


def new_round() -> RoundRun:
    return RoundRun(rid=1, job_id="j", number=1, attempt=1, kind="train", round_seed=0)


def test_round_table_is_a_single_path_with_failure_exits() -> None:
    assert set(TRANSITIONS) == set(RoundState)
    assert TRANSITIONS[R.COMMITTED] == frozenset() and TRANSITIONS[R.FAILED] == frozenset()
    path = [R.SELECTING, R.CONFIGURING, R.COLLECTING, R.AGGREGATING, R.COMMITTED]
    for a, b in zip(path, path[1:], strict=False):
        assert TRANSITIONS[a] == {b, R.FAILED}


def test_round_run_refuses_every_illegal_transition() -> None:
    for src in RoundState:
        for dst in RoundState:
            rnd = new_round()
            rnd.state = src
            if dst in TRANSITIONS[src]:
                rnd.advance(dst)
                assert rnd.state == dst
            else:
                with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
                    rnd.advance(dst)
                assert rnd.state == src


def test_round_run_bookkeeping() -> None:
    rnd = new_round()
    rnd.selected, rnd.target = {"a", "b", "c"}, 2
    assert not rnd.open_for_reports and rnd.weighted_metric("loss") is None
    for state in (R.CONFIGURING, R.COLLECTING):
        rnd.advance(state)
    assert rnd.open_for_reports
    rnd.record(
        "a",
        ParticipantReport(examples=10, loss=1.0, accuracy=0.5, train_time_s=1.0, uplink_bytes=100),
    )
    assert not rnd.enough.is_set()
    rnd.record(
        "b",
        ParticipantReport(examples=30, loss=2.0, accuracy=0.9, train_time_s=2.0, uplink_bytes=50),
    )
    assert rnd.enough.is_set() and rnd.uplink_bytes == 150
    assert rnd.dropped() == {"c"}
    assert rnd.weighted_metric("loss") == pytest.approx(1.75)
    assert rnd.weighted_metric("accuracy") == pytest.approx(0.8)
    rnd.advance(R.AGGREGATING)
    assert not rnd.open_for_reports
