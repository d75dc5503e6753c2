"""Compression benchmark: final accuracy vs uplink bytes per codec spec in the fleet simulator.

Run ``python -m tools.bench.compression [--quick] [--reuse]``.

Every row is one real simulation (``firmware_sim.sim.run_sim``: embedded broker, real agents
training ``cnn-fmnist`` through TFLite, real codec, real server) with the same partition,
seed, rounds, clients per round (over-selection 1.0, no dropouts, always available), local
epochs and learning rate; only the codec spec changes. ``wake_all`` makes every device check
in for every round, so selection depends on the seed only and every row trains the same
clients in the same rounds (the "client overlap" column checks it). Columns:

* final accuracy: central accuracy on the 10k Fashion-MNIST test set after the last round
  (and the mean of the last three rounds, which is less noisy);
* wire B/dev: the round's uplink bytes / reported devices, i.e. the exact MQTT bytes of the
  update messages, envelope (device, round, base-weights digest, metrics...) included;
* payload B: the codec payload alone (``UpdateEncoder.encode`` of a real update of device 0
  after one local round from the initial weights; its size depends only on spec and shapes);
* the ratios of both to dense float32 (``dense_float32_bytes``, 4 bytes per parameter).

Rows: the required specs, candidates for the best setting, and two ceiling rows (top-k with
float values at 10 % and 30 % density, i.e. sparsification alone); "best" is the candidate
with the highest final accuracy whose wire bytes (what went over MQTT, envelope included) are
at least 100x fewer than dense float32. ``q8+pred`` is a candidate only as a reference (4x, so
never the best): the momentum that ``pred`` brings, on nearly lossless updates.
``--extra-seeds 1,2`` runs the required and candidate specs again on other partition seeds
(own run directories) and adds a table of final accuracy per seed and the means: one 20-round
run moves by about a point with small changes, so the goal is judged on the means too.
Two TFF anchor rows run ``build_weighted_fed_avg`` on the same partition and the clients the
simulator selected in the ``none`` run (see ``tools.bench.tff_compression_anchor``): stock
``compression_aggregator()`` and the same aggregator with every tensor quantized.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.plots import plot_accuracy_vs_bytes
from fedge.tools.bench._common import (
    QUICK_FLEET,
    FleetSetting,
    codec_specs,
    command_line,
    machine_load,
    markdown_table,
    print_table,
    quiet_logs,
)
from fedge.tools.bench._compression_report import Verdict, summary_note, write_results
from fedge.tools.bench._compression_rows import COLUMNS, SeedRow, goal_on_means, seed_table
from fedge.tools.bench._compression_runs import Results, measure, run_extra_seeds

MODULE = "tools.bench.compression"
REQUIRED = ("none", "q8", "q4+rot", "topk:0.01+q8", "randk:0.01+q8")
CANDIDATES = (
    "topk:0.01+q4",
    "topk:0.015+q2",
    "topk:0.03+q2",
    "topk:0.01+q4+pred",
    "topk:0.015+q2+pred",
    "topk:0.023+q2+pred",
    "q8+pred",
)
# Top-k with float32 values at 10 % and 30 % density: what sparsification alone costs this
# model, far below 100x, i.e. the ceiling of any top-k setting that is meant to reach 100x.
CEILING = ("topk:0.1", "topk:0.3")
DOC_PLOT = Path("docs/img/compression_accuracy_vs_uplink.png")


Setting: TypeAlias = FleetSetting
FULL = Setting()
QUICK = Setting(**QUICK_FLEET)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="accuracy vs uplink bytes of codec specs")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK.devices} devices, {QUICK.rounds} rounds, "
        f"{QUICK.clients_per_round} per round, one candidate",
    )
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--epochs", type=int, help="override the local epochs")
    p.add_argument("--lr", type=float, help="override the client learning rate")
    p.add_argument("--specs", help="comma-separated required specs (default: the issue's five)")
    p.add_argument("--candidates", help="comma-separated candidates for the best setting")
    p.add_argument(
        "--ceiling",
        help=f"comma-separated ceiling rows (default: {','.join(CEILING)}; none with --quick)",
    )
    p.add_argument(
        "--extra-seeds",
        default="",
        help="comma-separated partition seeds to run the required and candidate "
        "specs on as well (an across-seeds table of their means)",
    )
    p.add_argument("--no-tff", action="store_true", help="skip the TFF anchor rows")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished runs in OUT/compression-runs with the identical config",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results directory")
    p.add_argument(
        "--plot",
        type=Path,
        help=f"plot PNG (default: {DOC_PLOT} for full runs, OUT/... for --quick)",
    )
    return p.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """The setting and the specs of one run of the benchmark, from the command line."""

    setting: Setting
    required: list[str]
    candidates: list[str]
    ceiling: list[str]
    name: str
    runs_dir: Path

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        base = QUICK if args.quick else FULL
        s = replace(
            base,
            rounds=args.rounds or base.rounds,
            local_epochs=args.epochs or base.local_epochs,
            lr=args.lr or base.lr,
        )
        required = codec_specs(args.specs, REQUIRED)
        candidates = codec_specs(args.candidates, CANDIDATES[:1] if args.quick else CANDIDATES)
        ceiling = codec_specs(args.ceiling, () if args.quick else CEILING)
        if required[0] != "none":
            raise ConfigError("the first required spec must be 'none' (the reference row)")
        name = "compression-quick" if args.quick else "compression"
        return cls(s, required, candidates, ceiling, name, args.out / f"{name}-runs")


def across_seeds(
    plan: Plan, args: argparse.Namespace, res: Results, command: str
) -> tuple[list[SeedRow], str]:
    """With ``--extra-seeds``: run them, print the across-seeds table; its rows and Markdown."""
    s = plan.setting
    extra = [int(x) for x in args.extra_seeds.split(",") if x.strip()]
    if not extra:
        return [], ""
    across = run_extra_seeds(
        s,
        list(dict.fromkeys(plan.required + plan.candidates)),
        extra,
        res.summaries,
        plan.runs_dir,
        args.reuse,
    )
    seed_columns = (
        "row",
        *(f"seed {x}" for x in [s.seed, *extra]),
        "mean final",
        "mean last-3",
        "points below none",
    )
    seed_cells = seed_table(across)
    seed_note = goal_on_means(across, res.rows, plan.candidates, [s.seed, *extra])
    print_table(
        "compression across seeds (final accuracy %)", seed_columns, seed_cells, command, seed_note
    )
    return across, f"\n\n{markdown_table(seed_columns, seed_cells)}\n\n{seed_note}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run every row; print the table; write JSON, a Markdown table and the plot."""
    args = parse_args(argv)
    quiet_logs()
    plan = Plan.of(args)
    s, name = plan.setting, plan.name
    load_before = machine_load()
    t0 = time.time()
    specs = plan.required + plan.candidates + plan.ceiling
    res = measure(s, specs, plan.candidates, plan.runs_dir, args.reuse, not args.no_tff)
    plot = args.plot or (args.out / "compression_quick.png" if args.quick else DOC_PLOT)
    plot_accuracy_vs_bytes(res.plot_runs, plot)
    table = [r.cells() for r in res.rows]
    if res.best is not None:
        table.append([f"best: {res.best.label}", *res.best.cells()[1:]])
    command = command_line(MODULE)
    verdict = Verdict.of(res)
    note = summary_note(s, res, verdict, load_before, t0)
    print_table("compression: accuracy vs uplink bytes", COLUMNS, table, command, note)
    across, seeds_md = across_seeds(plan, args, res, command)
    path = write_results(args.out, name, command, s, res, verdict, across, load_before, plot)
    (args.out / f"{name}.md").write_text(
        markdown_table(COLUMNS, table) + f"\n\n{note}{seeds_md}\n\n`{command}`\n"
    )
    print(f"wrote {path}, {args.out / f'{name}.md'} and {plot}")


if __name__ == "__main__":
    main()
