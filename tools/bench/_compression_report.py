"""The compression benchmark's verdict, table note and JSON."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.tools.bench._common import FleetSetting, machine_load, write_json
from fedge.tools.bench._compression_rows import GOAL_POINTS, GOAL_RATIO, SeedRow
from fedge.tools.bench._compression_runs import Results


@dataclass(frozen=True)
class Verdict:
    """Whether the best candidate is within the goal of ``none``, and how noisy ``none`` is."""

    goal_met: bool  # on final accuracy
    goal_last3: bool  # on the mean of the last three rounds
    tail: int  # rounds of ``none`` the noise is measured over
    noise: float  # round-to-round std of ``none``, in points

    @classmethod
    def of(cls, res: Results) -> Verdict:
        none, best = res.rows[0], res.best
        goal_met = (
            best is not None and none.final_accuracy - best.final_accuracy <= GOAL_POINTS / 100
        )
        goal_last3 = (
            best is not None and none.last3_accuracy - best.last3_accuracy <= GOAL_POINTS / 100
        )
        tail = [r["accuracy"] for r in res.summaries["none"]["rounds"][-5:]]
        return cls(goal_met, goal_last3, len(tail), 100 * float(np.std(tail)))


def summary_note(
    s: FleetSetting, res: Results, verdict: Verdict, load_before: dict[str, Any], t0: float
) -> str:
    """The main table's note: setting, goal verdicts, noise of ``none``, load and time."""
    best = res.best
    return (
        f"cnn-fmnist ({res.params:,} params, dense float32 {res.dense:,} B), "
        f"{s.devices} devices, {s.partition}, {s.clients_per_round} per round, "
        f"{s.rounds} rounds, "
        f"{s.local_epochs} local epoch(s), lr {s.lr}, seed {s.seed}; accuracies in %. "
        f"Goal (wire bytes >= {GOAL_RATIO:.0f}x fewer, within {GOAL_POINTS:g} point of none), "
        f"best candidate {best.label if best else '-'}: "
        f"{'met' if verdict.goal_met else 'not met'} on final accuracy, "
        f"{'met' if verdict.goal_last3 else 'not met'} on the last-3 mean; round-to-round std of "
        f"none over its last {verdict.tail} rounds: {verdict.noise:.1f} points. "
        f"Load before {load_before['loadavg']}, "
        f"after {machine_load()['loadavg']}; total {time.time() - t0:.0f} s."
    )


def write_results(
    out: Path,
    name: str,
    command: str,
    s: FleetSetting,
    res: Results,
    verdict: Verdict,
    across: Sequence[SeedRow],
    load_before: dict[str, Any],
    plot: Path,
) -> Path:
    """Everything of the run as ``<out>/<name>.json``: rows, goals, curves, load, plot path."""
    curves = {
        label: [(r["round"], r["accuracy"], r["uplink_bytes"]) for r in summ["rounds"]]
        for label, summ in res.plot_runs.items()
    }
    payload = {
        "command": command,
        "setting": asdict(s),
        "dense_float32_bytes": res.dense,
        "params": res.params,
        "rows": [asdict(r) for r in res.rows],
        "best": None if res.best is None else res.best.label,
        "goal_met": verdict.goal_met,
        "goal_met_last3": verdict.goal_last3,
        "none_round_std_points": verdict.noise,
        "across_seeds": [asdict(r) for r in across],
        "load_before": load_before,
        "load_after": machine_load(),
        "curves": curves,
        "plot": str(plot),
    }
    return write_json(out, f"{name}.json", payload)
