"""Per-round overhead of a simulated fleet: run_sim in a child process, CPU per group, the table."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import signal
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.sim import SimConfig, run_sim
from fedge.server.store import SQLiteStore
from fedge.tools.bench._common import CpuSampler, Section, quiet_logs, round_or_none

ROUND_COLUMNS = (
    "devices",
    "rounds",
    "selected",
    "reported",
    "wall s",
    "slowest train s",
    "overhead s",
    "overhead/selected ms",
    "serial train s",
    "select s",
    "collect s",
    "commit s",
    "server CPU ms/sel",
    "devices CPU ms/sel",
    "broker CPU ms/sel",
)
ROUND_NOTE = (
    "overhead = round wall - slowest device's training; serial train = largest "
    "per-worker sum of training times (agents of a worker share one interpreter); "
    "select/collect/commit = the round's phases; CPU ms/sel = CPU time of the server "
    "process, the simulator workers and Mosquitto over the measured rounds, per "
    "selected device"
)


@dataclass(frozen=True)
class RoundRow:
    """Per-round overhead of one simulated fleet (means over the measured rounds)."""

    devices: int
    rounds: int
    selected: float
    reported: float
    wall_s: float
    slowest_train_s: float
    serial_train_s: float
    select_s: float
    collect_s: float
    commit_s: float
    server_cpu_ms: float | None = None  # CPU per selected device: server process,
    devices_cpu_ms: float | None = None  # simulator worker processes (the agents),
    broker_cpu_ms: float | None = None  # Mosquitto, over the measured rounds

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.slowest_train_s

    @property
    def overhead_per_device_ms(self) -> float:
        return 1000.0 * self.overhead_s / max(self.selected, 1.0)

    @property
    def overhead_no_serial_s(self) -> float:
        return self.wall_s - self.serial_train_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "overhead_s": self.overhead_s,
            "overhead_per_device_ms": self.overhead_per_device_ms,
            "overhead_no_serial_s": self.overhead_no_serial_s,
        }


def round_stats(db: Path, job: str, workers: int, skip_first: int = 1) -> list[dict[str, float]]:
    """Per committed training round after the first ``skip_first``: wall, training, phases.

    Device ``dev-NNNNN`` runs in simulator worker ``NNNNN % workers`` (as ``run_sim`` deals them).
    """
    store = SQLiteStore(db)
    try:
        out = []
        rows = [r for r in store.rounds(job, "train") if r["state"] == "committed"]
        for row in rows[skip_first:]:
            at = {t["state"]: t["at"] for t in store.transitions(row["rid"])}
            per_worker = [0.0] * workers
            for p in store.participants(row["rid"]):
                if p["status"] == "reported" and p["train_time_s"] is not None:
                    per_worker[int(p["device_id"].rsplit("-", 1)[1]) % workers] += p["train_time_s"]
            out.append(
                {
                    "round": row["round"],
                    "started": row["started"],
                    "ended": row["ended"],
                    "selected": row["selected"],
                    "reported": row["reported"],
                    "wall_s": row["ended"] - row["started"],
                    "slowest_train_s": row["slowest_train_s"] or 0.0,
                    "serial_train_s": max(per_worker),
                    "select_s": at["configuring"] - row["started"],
                    "collect_s": at["aggregating"] - at["collecting"],
                    "commit_s": row["ended"] - at["aggregating"],
                }
            )
        return out
    finally:
        store.close()


def summarise_rounds(
    devices: int, stats: Sequence[dict[str, float]], cpu: dict[str, float] | None = None
) -> RoundRow:
    """Means over the measured rounds; ``cpu`` = CPU seconds per group over all of them."""
    if not stats:
        raise ConfigError(f"{devices} devices: no measured round committed")

    def mean(key: str) -> float:
        return float(statistics.fmean(s[key] for s in stats))

    def per_device_ms(group: str) -> float | None:
        selected = sum(s["selected"] for s in stats)
        return None if cpu is None else 1000.0 * cpu.get(group, 0.0) / max(selected, 1)

    return RoundRow(
        devices,
        len(stats),
        mean("selected"),
        mean("reported"),
        mean("wall_s"),
        mean("slowest_train_s"),
        mean("serial_train_s"),
        mean("select_s"),
        mean("collect_s"),
        mean("commit_s"),
        per_device_ms("server"),
        per_device_ms("devices"),
        per_device_ms("broker"),
    )


@dataclass(frozen=True)
class SimOutcome:
    """One simulator run: how the job ended, its measured rounds, and failed round attempts."""

    devices: int
    status: str
    row: RoundRow | None
    stats: list[dict[str, float]]
    failures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "status": self.status,
            "failures": self.failures,
            "row": self.row.to_dict() if self.row else None,
            "rounds": self.stats,
        }


def _sim_child(config: SimConfig, results: Any) -> None:
    """Process entry: run the simulation; SIGTERM exits through run_sim's cleanup."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    quiet_logs()
    summary = run_sim(config)
    results.put(str(summary["status"]))


def unfinished_rounds(db: Path, job: str) -> list[str]:
    """Training round attempts that failed or never ended, with the reason."""
    store = SQLiteStore(db)
    try:
        return [
            f"round {r['round']} attempt {r['attempt']}: "
            + (
                f"{r['reason']} ({r['reported']}/{r['selected']} reported)"
                if r["state"] == "failed"
                else f"still {r['state']} when stopped"
            )
            for r in store.rounds(job, "train")
            if r["state"] != "committed"
        ]
    finally:
        store.close()


def simulate_rounds(config: SimConfig, broker_pid: int, budget_s: float) -> SimOutcome:
    """Run ``config`` with ``run_sim`` in a child process; measure the rounds after the first.

    The child is the server; its children are the simulator workers. CPU is sampled for the
    server, the workers and the broker and split over the measured rounds' window. After
    ``budget_s`` the child is stopped (SIGTERM, which runs the simulator's cleanup). A job
    that fails or times out is reported (status and failed attempts), never raised.
    """
    if config.out.exists():
        shutil.rmtree(config.out)  # a finished job there would be resumed, not run
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_sim_child, args=(config, results), name="fedge-bench-sim")

    def groups() -> dict[str, list[int]]:
        try:
            kids = [c.pid for c in psutil.Process(child.pid).children(recursive=True)]
        except psutil.Error:
            kids = []
        return {"server": [child.pid] if child.pid else [], "devices": kids, "broker": [broker_pid]}

    child.start()
    sampler = CpuSampler(groups).start()
    try:
        child.join(timeout=budget_s)
        status = f"stopped after {budget_s:.0f} s" if child.is_alive() else "ended"
        if child.is_alive():
            child.terminate()
            child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
    finally:
        sampler.stop()
    if status == "ended":
        status = results.get(timeout=5) if not results.empty() else f"exit {child.exitcode}"
    db = config.out.resolve() / "server" / "fedge.db"
    stats = round_stats(db, "sim", min(config.workers, config.devices)) if db.exists() else []
    cpu = sampler.cpu_between(stats[0]["started"], stats[-1]["ended"]) if stats else None
    failures = unfinished_rounds(db, "sim") if db.exists() else ["no server state written"]
    row = summarise_rounds(config.devices, stats, cpu) if stats else None
    return SimOutcome(config.devices, status, row, stats, failures)


def outcome_note(outcomes: Sequence[SimOutcome]) -> str:
    """The table note: what the columns mean, then any failed job or round attempt."""
    lines = [ROUND_NOTE]
    for o in outcomes:
        if o.status != "finished" or o.failures:
            lines.append(f"{o.devices} devices: job {o.status}; " + "; ".join(o.failures))
    return "\n".join(lines)


def round_table_rows(rows: Sequence[RoundRow]) -> list[list[object]]:
    """Cells of the per-round table, in :data:`ROUND_COLUMNS` order."""
    return [
        [
            r.devices,
            r.rounds,
            r.selected,
            r.reported,
            round(r.wall_s, 3),
            round(r.slowest_train_s, 4),
            round(r.overhead_s, 3),
            round(r.overhead_per_device_ms, 2),
            round(r.serial_train_s, 3),
            round(r.select_s, 3),
            round(r.collect_s, 3),
            round(r.commit_s, 3),
            round_or_none(r.server_cpu_ms, 3),
            round_or_none(r.devices_cpu_ms, 3),
            round_or_none(r.broker_cpu_ms, 3),
        ]
        for r in rows
    ]


def round_section(title: str, outcomes: Sequence[SimOutcome], load: str) -> Section:
    """The per-round overhead table of ``outcomes``, its note and the machine load."""
    rows = round_table_rows([o.row for o in outcomes if o.row])
    return (title, ROUND_COLUMNS, rows, outcome_note(outcomes) + f"\n{load}")
