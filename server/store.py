"""SQLite (WAL) persistence: devices, jobs, rounds and their transitions, participants, checkpoints."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, fleet TEXT NOT NULL, profile TEXT, runtime TEXT,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, online INTEGER NOT NULL DEFAULT 0,
    eligibility TEXT, identity_key BLOB, rounds_reported INTEGER NOT NULL DEFAULT 0,
    rounds_dropped INTEGER NOT NULL DEFAULT 0, rejected_messages INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, committed_round INTEGER NOT NULL DEFAULT 0,
    weights_sha TEXT, optimizer_sha TEXT, reason TEXT, delta_sha TEXT, delta_base_sha TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, started REAL NOT NULL, ended REAL, selected INTEGER DEFAULT 0,
    reported INTEGER DEFAULT 0, dropped INTEGER DEFAULT 0, refused INTEGER DEFAULT 0,
    uplink_bytes INTEGER DEFAULT 0, downlink_bytes INTEGER DEFAULT 0,
    train_loss REAL, train_accuracy REAL, eval_loss REAL, eval_accuracy REAL,
    fed_eval_loss REAL, fed_eval_accuracy REAL, epsilon REAL, dp_clip REAL,
    aggregation_s REAL, slowest_train_s REAL, weights_sha TEXT, reason TEXT,
    UNIQUE (job_id, kind, round, attempt)
);
CREATE TABLE IF NOT EXISTS round_transitions (
    rid INTEGER NOT NULL, state TEXT NOT NULL, at REAL NOT NULL, reason TEXT
);
CREATE TABLE IF NOT EXISTS participants (
    rid INTEGER NOT NULL, device_id TEXT NOT NULL,
    status TEXT NOT NULL, examples INTEGER, loss REAL, accuracy REAL, train_time_s REAL,
    uplink_bytes INTEGER DEFAULT 0, downlink_bytes INTEGER DEFAULT 0, reason TEXT, updated REAL,
    PRIMARY KEY (rid, device_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, weights_sha TEXT NOT NULL,
    optimizer_sha TEXT, created REAL NOT NULL, PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS rejections (
    at REAL NOT NULL, device_id TEXT, topic TEXT, reason TEXT NOT NULL
);
"""
# Columns added after a table's first release: (table, column, type). A store written by an
# older server gets them on open, so an upgraded server resumes its jobs.
ADDED_COLUMNS = (("jobs", "delta_sha", "TEXT"), ("jobs", "delta_base_sha", "TEXT"))


class Store:
    """Thread-safe wrapper around one SQLite connection in WAL mode."""

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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, args).fetchall()]

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._conn.execute(sql, args)

    # devices -----------------------------------------------------------------------------
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
        with self._lock:
            self._conn.execute(
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

    def device_identity(self, device_id: str) -> bytes | None:
        rows = self.query("SELECT identity_key FROM devices WHERE id=?", (device_id,))
        return rows[0]["identity_key"] if rows else None

    def record_rejection(self, device_id: str | None, topic: str, reason: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO rejections VALUES (?,?,?,?)", (time.time(), device_id, topic, reason)
            )
            if device_id:
                c.execute(
                    "UPDATE devices SET rejected_messages = rejected_messages + 1 WHERE id=?",
                    (device_id,),
                )

    # jobs --------------------------------------------------------------------------------
    def create_job(self, job_id: str, config: dict[str, Any]) -> None:
        now = time.time()
        self.execute(
            "INSERT INTO jobs (id, config, status, created, updated) VALUES (?,?,?,?,?)",
            (job_id, json.dumps(config), "running", now, now),
        )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            return None
        row = rows[0]
        row["config"] = json.loads(row["config"])
        return row

    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        self.execute(
            "UPDATE jobs SET status=?, reason=?, updated=? WHERE id=?",
            (status, reason, time.time(), job_id),
        )

    # rounds ------------------------------------------------------------------------------
    def start_round(self, job_id: str, rnd: int, attempt: int, kind: str, state: str) -> int:
        """Create a round row and its first transition; returns the round's row id."""
        now = time.time()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO rounds (job_id, round, attempt, kind, state, started) VALUES (?,?,?,?,?,?)",
                (job_id, rnd, attempt, kind, state, now),
            )
            rid = int(cur.lastrowid or 0)
            c.execute("INSERT INTO round_transitions VALUES (?,?,?,?)", (rid, state, now, None))
        return rid

    def transition(self, rid: int, state: str, *, reason: str | None = None, **fields: Any) -> None:
        """Persist a round's new state (and any updated columns) atomically."""
        now = time.time()
        if state in ("committed", "failed"):
            fields.setdefault("ended", now)
        if reason is not None:
            fields["reason"] = reason
        sets = ", ".join(["state=?"] + [f"{k}=?" for k in fields])
        with self.transaction() as c:
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
        """Atomically mark a round committed and move the job's checkpoint to it.

        ``delta`` is (downlink-delta blob digest, digest of the weights it applies to), kept
        with the job so that a restarted server can offer the same delta again.
        """
        delta_sha, delta_base_sha = delta or (None, None)
        now = time.time()
        fields.update(ended=now, weights_sha=weights_sha)
        sets = ", ".join(["state='committed'"] + [f"{k}=?" for k in fields])
        with self.transaction() as c:
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
        sets = ", ".join(f"{k}=?" for k in fields)
        self.execute(f"UPDATE rounds SET {sets} WHERE rid=?", (*fields.values(), rid))

    def rounds(self, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        if kind is None:
            return self.query("SELECT * FROM rounds WHERE job_id=? ORDER BY rid", (job_id,))
        return self.query(
            "SELECT * FROM rounds WHERE job_id=? AND kind=? ORDER BY rid", (job_id, kind)
        )

    def round_row(self, rid: int) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM rounds WHERE rid=?", (rid,))
        return rows[0] if rows else None

    def transitions(self, rid: int) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM round_transitions WHERE rid=? ORDER BY at", (rid,))

    def attempts(self, job_id: str, kind: str, rnd: int) -> int:
        rows = self.query(
            "SELECT COUNT(*) AS n FROM rounds WHERE job_id=? AND kind=? AND round=?",
            (job_id, kind, rnd),
        )
        return int(rows[0]["n"])

    def fail_unfinished_rounds(self, job_id: str, reason: str) -> int:
        """Mark rounds left open by a crash as failed; returns how many."""
        rows = self.query(
            "SELECT rid FROM rounds WHERE job_id=? AND state NOT IN ('committed','failed')",
            (job_id,),
        )
        for row in rows:
            self.transition(row["rid"], "failed", reason=reason)
        return len(rows)

    # participants ------------------------------------------------------------------------
    def set_participants(self, rid: int, device_ids: list[str]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO participants (rid, device_id, status, updated) VALUES (?,?,?,?)",
                [(rid, d, "selected", now) for d in device_ids],
            )

    def set_participant(self, rid: int, device_id: str, status: str, **fields: Any) -> None:
        sets = ", ".join(["status=?", "updated=?"] + [f"{k}=?" for k in fields])
        with self.transaction() as c:
            c.execute(
                f"UPDATE participants SET {sets} WHERE rid=? AND device_id=?",
                (status, time.time(), *fields.values(), rid, device_id),
            )
            if status == "reported":
                c.execute(
                    "UPDATE devices SET rounds_reported = rounds_reported + 1 WHERE id=?",
                    (device_id,),
                )
            elif status == "dropped":
                c.execute(
                    "UPDATE devices SET rounds_dropped = rounds_dropped + 1 WHERE id=?",
                    (device_id,),
                )

    def participants(self, rid: int) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM participants WHERE rid=? ORDER BY device_id", (rid,))
