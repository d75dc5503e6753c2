"""The store's reads in SQLite; `SQLiteStore` adds the connection and the writes."""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import Any

from fedge.server.store.base import (
    CentralEval,
    JobStatus,
    ProfileDevices,
    RoundDuration,
    RoundTotals,
    Row,
    RowPage,
    StoreReader,
)


def where(conditions: list[tuple[str, Any]]) -> tuple[str, tuple[Any, ...]]:
    """`` WHERE a=? AND b=?`` over the conditions whose value is not None, and their values."""
    present = [(column, value) for column, value in conditions if value is not None]
    if not present:
        return "", ()
    return " WHERE " + " AND ".join(f"{c}=?" for c, _ in present), tuple(v for _, v in present)


def _job_row(row: Row) -> Row:
    row["config"] = json.loads(row["config"])
    return row


class SQLiteReads(StoreReader):
    """Every `StoreReader` method as SQL over `_query`, which the connection's owner provides."""

    @abstractmethod
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        """Rows of one statement as dicts."""

    def _page(
        self,
        table: str,
        cond: str,
        args: tuple[Any, ...],
        order: str,
        limit: int | None,
        offset: int,
    ) -> RowPage:
        """One page of ``table`` (``limit`` None: every row) and the count of matching rows."""
        total = self._query(f"SELECT COUNT(*) AS n FROM {table}{cond}", args)[0]["n"]
        rows = self._query(
            f"SELECT * FROM {table}{cond} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, -1 if limit is None else limit, offset),
        )
        return RowPage(total=int(total), items=rows)

    # devices ------------------------------------------------------------------------------
    def devices(
        self,
        *,
        online: bool | None = None,
        profile: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> RowPage:
        cond, args = where(
            [("online", None if online is None else int(online)), ("profile", profile)]
        )
        return self._page("devices", cond, args, "id", limit, offset)

    def device(self, device_id: str) -> Row | None:
        rows = self._query("SELECT * FROM devices WHERE id=?", (device_id,))
        return rows[0] if rows else None

    def device_history(self, device_id: str, limit: int) -> list[Row]:
        return self._query(
            "SELECT p.*, r.job_id, r.round, r.attempt, r.kind, r.state AS round_state "
            "FROM participants p JOIN rounds r ON r.rid = p.rid WHERE p.device_id=? "
            "ORDER BY p.rid DESC LIMIT ?",
            (device_id, limit),
        )

    def device_count(self, fleet: str) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM devices WHERE fleet=?", (fleet,))[0]["n"])

    def device_identity(self, device_id: str) -> bytes | None:
        rows = self._query("SELECT identity_key FROM devices WHERE id=?", (device_id,))
        return rows[0]["identity_key"] if rows else None

    def rejection_count(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM rejections")[0]["n"])

    def profile_devices(self) -> list[ProfileDevices]:
        return [
            ProfileDevices(profile=r["profile"], known=int(r["n"]), online=int(r["up"] or 0))
            for r in self._query(
                "SELECT COALESCE(profile, 'unknown') AS profile, COUNT(*) AS n, "
                "SUM(online) AS up FROM devices GROUP BY 1 ORDER BY 1"
            )
        ]

    # jobs ---------------------------------------------------------------------------------
    def job(self, job_id: str) -> Row | None:
        rows = self._query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job_row(rows[0]) if rows else None

    def jobs(self, *, limit: int | None = None, offset: int = 0) -> RowPage:
        page = self._page("jobs", "", (), "created DESC, id", limit, offset)
        return RowPage(total=page.total, items=[_job_row(r) for r in page.items])

    def job_statuses(self) -> list[JobStatus]:
        return [
            JobStatus(job_id=r["id"], status=r["status"], committed_round=r["committed_round"])
            for r in self._query("SELECT id, status, committed_round FROM jobs ORDER BY id")
        ]

    # rounds -------------------------------------------------------------------------------
    def rounds(self, job_id: str, kind: str | None = None) -> list[Row]:
        cond, args = where([("job_id", job_id), ("kind", kind)])
        return self._query(f"SELECT * FROM rounds{cond} ORDER BY rid", args)

    def rounds_page(
        self,
        job_id: str,
        *,
        kind: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> RowPage:
        cond, args = where([("job_id", job_id), ("kind", kind), ("state", state)])
        return self._page("rounds", cond, args, "rid", limit, offset)

    def round_row(self, rid: int) -> Row | None:
        rows = self._query("SELECT * FROM rounds WHERE rid=?", (rid,))
        return rows[0] if rows else None

    def last_round(self, job_id: str) -> Row | None:
        rows = self._query(
            "SELECT * FROM rounds WHERE job_id=? ORDER BY rid DESC LIMIT 1", (job_id,)
        )
        return rows[0] if rows else None

    def round_counts(self, job_id: str) -> dict[str, int]:
        rows = self._query(
            "SELECT state, COUNT(*) AS n FROM rounds WHERE job_id=? GROUP BY state", (job_id,)
        )
        return {r["state"]: int(r["n"]) for r in rows}

    def attempts(self, job_id: str, kind: str, rnd: int) -> int:
        rows = self._query(
            "SELECT COUNT(*) AS n FROM rounds WHERE job_id=? AND kind=? AND round=?",
            (job_id, kind, rnd),
        )
        return int(rows[0]["n"])

    def transitions(self, rid: int) -> list[Row]:
        return self._query("SELECT * FROM round_transitions WHERE rid=? ORDER BY at", (rid,))

    def participants(self, rid: int) -> list[Row]:
        return self._query("SELECT * FROM participants WHERE rid=? ORDER BY device_id", (rid,))

    def checkpoint_weights(self, job_id: str, rnd: int) -> str | None:
        rows = self._query(
            "SELECT weights_sha FROM checkpoints WHERE job_id=? AND round=?", (job_id, rnd)
        )
        return str(rows[0]["weights_sha"]) if rows else None

    # aggregates for /metrics --------------------------------------------------------------
    def round_totals(self) -> list[RoundTotals]:
        rows = self._query(
            "SELECT job_id, kind, state, COUNT(*) AS n, SUM(reported) AS reported, "
            "SUM(dropped) AS dropped, SUM(refused) AS refused, SUM(uplink_bytes) AS uplink_bytes,"
            " SUM(downlink_bytes) AS downlink_bytes FROM rounds GROUP BY job_id, kind, state"
        )
        counters = ("reported", "dropped", "refused", "uplink_bytes", "downlink_bytes")
        return [
            RoundTotals(
                job_id=r["job_id"],
                kind=r["kind"],
                state=r["state"],
                count=int(r["n"]),
                **{k: int(r[k] or 0) for k in counters},
            )
            for r in rows
        ]

    def round_durations(self) -> list[RoundDuration]:
        rows = self._query(
            "SELECT job_id, kind, ended - started AS seconds, aggregation_s "
            "FROM rounds WHERE state='committed' AND ended IS NOT NULL"
        )
        return [
            RoundDuration(r["job_id"], r["kind"], float(r["seconds"]), r["aggregation_s"])
            for r in rows
        ]

    def central_evals(self) -> list[CentralEval]:
        rows = self._query(
            "SELECT job_id, eval_accuracy, eval_loss FROM rounds WHERE rid IN (SELECT MAX(rid) "
            "FROM rounds WHERE state='committed' AND eval_accuracy IS NOT NULL GROUP BY job_id)"
        )
        return [CentralEval(r["job_id"], r["eval_accuracy"], r["eval_loss"]) for r in rows]
