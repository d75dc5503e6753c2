"""The embedded store: SQLite in WAL mode, the only place that writes SQL."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedge.server.rounds import TRANSITIONS, IllegalTransition, RoundState
from fedge.server.store.base import Row, Store
from fedge.server.store.schema import ADDED_COLUMNS, SCHEMA
from fedge.server.store.sqlite_reads import SQLiteReads

TERMINAL = (RoundState.COMMITTED.value, RoundState.FAILED.value)


def _state(name: str) -> RoundState:
    try:
        return RoundState(name)
    except ValueError:
        raise IllegalTransition(f"unknown round state {name!r}") from None


class SQLiteStore(SQLiteReads, Store):
    """`Store` over one SQLite connection in WAL mode, shared by threads under a lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        for table, column, kind in ADDED_COLUMNS:
            present = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically (and read what they depend on inside the same lock)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, args).fetchall()]

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._conn.execute(sql, args)

    # devices and jobs ---------------------------------------------------------------------
    def upsert_device(
        self,
        device_id: str,
        fleet: str,
        *,
        online: bool | None = None,
        profile: str | None = None,
        runtime: str | None = None,
        eligibility: dict[str, Any] | None = None,
        identity_key: bytes | None = None,
    ) -> None:
        """Create or update a device row in one statement; None leaves a field as it is."""
        now = time.time()
        self._execute(
            "INSERT INTO devices (id, fleet, first_seen, last_seen, online, profile, runtime, "
            "eligibility, identity_key) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET last_seen=excluded.last_seen, "
            "online=COALESCE(?, devices.online), "
            "profile=COALESCE(excluded.profile, devices.profile), "
            "runtime=COALESCE(excluded.runtime, devices.runtime), "
            "eligibility=COALESCE(excluded.eligibility, devices.eligibility), "
            "identity_key=COALESCE(excluded.identity_key, devices.identity_key)",
            (
                device_id,
                fleet,
                now,
                now,
                int(bool(online)),
                profile,
                runtime,
                None if eligibility is None else json.dumps(eligibility),
                identity_key,
                None if online is None else int(online),
            ),
        )

    def record_rejection(self, device_id: str | None, topic: str, reason: str) -> None:
        with self._transaction() as c:
            c.execute(
                "INSERT INTO rejections VALUES (?,?,?,?)", (time.time(), device_id, topic, reason)
            )
            if device_id:
                c.execute(
                    "UPDATE devices SET rejected_messages = rejected_messages + 1 WHERE id=?",
                    (device_id,),
                )

    def create_job(self, job_id: str, config: dict[str, Any]) -> None:
        now = time.time()
        self._execute(
            "INSERT INTO jobs (id, config, status, created, updated) VALUES (?,?,?,?,?)",
            (job_id, json.dumps(config), "running", now, now),
        )

    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        self._execute(
            "UPDATE jobs SET status=?, reason=?, updated=? WHERE id=?",
            (status, reason, time.time(), job_id),
        )

    # rounds -------------------------------------------------------------------------------
    def _check_move(self, c: sqlite3.Connection, rid: int, state: str) -> None:
        """IllegalTransition unless the table allows the stored state of ``rid`` -> ``state``."""
        new = _state(state)
        row = c.execute("SELECT state FROM rounds WHERE rid=?", (rid,)).fetchone()
        if row is None:
            raise IllegalTransition(f"no round with rid {rid}")
        old = _state(row["state"])
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"round rid {rid}: {old.value} -> {new.value}")

    def start_round(
        self, job_id: str, rnd: int, attempt: int, kind: str, state: str = "selecting"
    ) -> int:
        """Create a round row and its first transition; returns the round's row id."""
        if _state(state) != RoundState.SELECTING:
            raise IllegalTransition(f"a round starts in selecting, not in {state}")
        now = time.time()
        with self._transaction() as c:
            cur = c.execute(
                "INSERT INTO rounds (job_id, round, attempt, kind, state, started) "
                "VALUES (?,?,?,?,?,?)",
                (job_id, rnd, attempt, kind, state, now),
            )
            rid = int(cur.lastrowid or 0)
            c.execute("INSERT INTO round_transitions VALUES (?,?,?,?)", (rid, state, now, None))
        return rid

    def transition(self, rid: int, state: str, *, reason: str | None = None, **fields: Any) -> None:
        """Persist a round's new state (and any updated columns) atomically."""
        now = time.time()
        if state in TERMINAL:
            fields.setdefault("ended", now)
        if reason is not None:
            fields["reason"] = reason
        sets = ", ".join(["state=?"] + [f"{k}=?" for k in fields])
        with self._transaction() as c:
            self._check_move(c, rid, state)
            c.execute(f"UPDATE rounds SET {sets} WHERE rid=?", (state, *fields.values(), rid))
            c.execute("INSERT INTO round_transitions VALUES (?,?,?,?)", (rid, state, now, reason))

    def commit_round(
        self,
        rid: int,
        job_id: str,
        rnd: int,
        weights_sha: str,
        optimizer_sha: str | None,
        *,
        delta: tuple[str, str] | None = None,
        **fields: Any,
    ) -> None:
        delta_sha, delta_base_sha = delta or (None, None)
        now = time.time()
        fields.update(ended=now, weights_sha=weights_sha)
        sets = ", ".join(["state='committed'"] + [f"{k}=?" for k in fields])
        with self._transaction() as c:
            self._check_move(c, rid, RoundState.COMMITTED.value)
            c.execute(f"UPDATE rounds SET {sets} WHERE rid=?", (*fields.values(), rid))
            c.execute(
                "INSERT INTO round_transitions VALUES (?,?,?,?)", (rid, "committed", now, None)
            )
            c.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                (job_id, rnd, weights_sha, optimizer_sha, now),
            )
            c.execute(
                "UPDATE jobs SET committed_round=?, weights_sha=?, optimizer_sha=?, delta_sha=?, "
                "delta_base_sha=?, updated=? WHERE id=?",
                (rnd, weights_sha, optimizer_sha, delta_sha, delta_base_sha, now, job_id),
            )

    def update_round(self, rid: int, **fields: Any) -> None:
        if "state" in fields:
            raise IllegalTransition("update_round never moves a round's state; use transition")
        sets = ", ".join(f"{k}=?" for k in fields)
        self._execute(f"UPDATE rounds SET {sets} WHERE rid=?", (*fields.values(), rid))

    def fail_unfinished_rounds(self, job_id: str, reason: str) -> int:
        """Mark rounds left open by a crash as failed; returns how many."""
        rows = self._query(
            "SELECT rid FROM rounds WHERE job_id=? AND state NOT IN (?,?)", (job_id, *TERMINAL)
        )
        for row in rows:
            self.transition(row["rid"], RoundState.FAILED.value, reason=reason)
        return len(rows)

    def set_participants(self, rid: int, device_ids: list[str]) -> None:
        now = time.time()
        with self._transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO participants (rid, device_id, status, updated) "
                "VALUES (?,?,?,?)",
                [(rid, d, "selected", now) for d in device_ids],
            )

    def set_participant(self, rid: int, device_id: str, status: str, **fields: Any) -> None:
        sets = ", ".join(["status=?", "updated=?"] + [f"{k}=?" for k in fields])
        counter = {"reported": "rounds_reported", "dropped": "rounds_dropped"}.get(status)
        with self._transaction() as c:
            c.execute(
                f"UPDATE participants SET {sets} WHERE rid=? AND device_id=?",
                (status, time.time(), *fields.values(), rid, device_id),
            )
            if counter is not None:
                c.execute(f"UPDATE devices SET {counter} = {counter} + 1 WHERE id=?", (device_id,))
