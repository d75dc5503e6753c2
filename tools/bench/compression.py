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
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.codec import UpdateEncoder, dense_float32_bytes, parse_spec
from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.plots import plot_accuracy_vs_bytes
from fedge.firmware_sim.sim import SimConfig, cached_artifact_dir
from fedge.tools.bench._common import (
    QUICK_FLEET,
    FleetSetting,
    command_line,
    machine_load,
    markdown_table,
    print_table,
    quiet_logs,
    run_or_reuse,
    write_json,
)

REQUIRED = ("none", "q8", "q4+rot", "topk:0.01+q8", "randk:0.01+q8")
CANDIDATES = ("topk:0.01+q4", "topk:0.015+q2", "topk:0.03+q2", "topk:0.01+q4+pred",
              "topk:0.015+q2+pred", "topk:0.023+q2+pred", "q8+pred")
# Predictive coding (`pred`) predicts from the previous global step, which devices receive as
# the downlink delta: its rows send the downlink with this spec (the others send full weights).
PRED_DOWNLINK = "q8"
# Top-k with float32 values at 10 % and 30 % density: what sparsification alone costs this
# model, far below 100x, i.e. the ceiling of any top-k setting that is meant to reach 100x.
CEILING = ("topk:0.1", "topk:0.3")
GOAL_RATIO = 100.0
GOAL_POINTS = 1.0
DOC_PLOT = Path("docs/img/compression_accuracy_vs_uplink.png")
COLUMNS = ("row", "final acc", "last-3 acc", "wire B/dev", "wire ratio", "payload B",
           "payload ratio", "cum. uplink MB", "client overlap", "wall s")


Setting = FleetSetting
FULL = Setting()
QUICK = Setting(**QUICK_FLEET)


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    label: str
    kind: str  # "fedge" or "tff"
    spec: str
    final_accuracy: float
    last3_accuracy: float
    wire_bytes_per_device: float
    wire_ratio: float
    payload_bytes: int | None
    payload_ratio: float | None
    cumulative_uplink_mb: float
    client_overlap: float | None
    wall_s: float

    def cells(self) -> list[object]:
        """The table cells in :data:`COLUMNS` order."""
        return [self.label, round(100 * self.final_accuracy, 2),
                round(100 * self.last3_accuracy, 2),
                round(self.wire_bytes_per_device), round(self.wire_ratio, 1), self.payload_bytes,
                None if self.payload_ratio is None else round(self.payload_ratio, 1),
                round(self.cumulative_uplink_mb, 3),
                None if self.client_overlap is None else f"{100 * self.client_overlap:.0f} %",
                round(self.wall_s)]


def slug(spec: str) -> str:
    """A directory name for a spec (``topk:0.01+q8`` -> ``topk_0.01-q8``)."""
    return spec.replace(":", "_").replace("+", "-").replace("=", "")


def sim_config(s: Setting, spec: str, out: Path) -> SimConfig:
    """The simulator configuration of one row."""
    return SimConfig(out=out, devices=s.devices, rounds=s.rounds, dataset="fashion-mnist",
                     model="cnn-fmnist", partition=s.partition,
                     clients_per_round=s.clients_per_round,
                     over_selection=1.0, wake_all=True, availability="always", dropout=0.0,
                     profiles="android-high", seed=s.seed, compression=spec,
                     downlink=PRED_DOWNLINK if parse_spec(spec).predict is not None else None,
                     local_epochs=s.local_epochs, lr=s.lr, progress=False,
                     round_deadline_s=s.round_deadline_s)


def run_spec(s: Setting, spec: str, runs_dir: Path, reuse: bool) -> dict[str, Any]:
    """Simulate one spec (or reuse a finished run with the identical configuration)."""
    return run_or_reuse(sim_config(s, spec, runs_dir / slug(spec)), reuse)


def schedule(run_dir: Path) -> list[list[int]]:
    """Device indices that reported in each committed training round of a finished run."""
    from fedge.server.store import Store

    store = Store(run_dir / "server" / "fedge.db")
    try:
        out = []
        for rnd in store.rounds("sim", "train"):
            if rnd["state"] == "committed":
                out.append(sorted(int(p["device_id"].split("-")[1])
                                  for p in store.participants(rnd["rid"])
                                  if p["status"] == "reported"))
    finally:
        store.close()
    return out


def client_overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """Mean share of ``b``'s clients that ``a`` also picked, round by round (1.0 = same)."""
    if not a or len(a) != len(b):
        return 0.0
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


def sample_delta(artifact: Path, device_dir: Path, s: Setting) -> list[np.ndarray]:
    """A real update: device 0's weights after one local round from the initial weights."""
    from fedge.edge_client.artifact import load_artifact
    from fedge.edge_client.data import load_local_dataset
    from fedge.edge_client.trainer import LocalTrainer

    trainer = LocalTrainer(load_artifact(artifact))
    start = trainer.get_weights()
    x, y = load_local_dataset(device_dir / "train.npz")
    trainer.fit(x, y, epochs=s.local_epochs, lr=s.lr, seed=s.seed)
    return [new - old for new, old in zip(trainer.get_weights(), start, strict=True)]


def payload_bytes(spec: str, delta: Sequence[np.ndarray]) -> int:
    """Size of the codec payload of ``delta`` under ``spec`` (no residual, fixed seeds)."""
    encoder = UpdateEncoder(parse_spec(spec), [d.shape for d in delta])
    return len(encoder.encode(delta, round_seed=1, rng_seed=1).payload)


def accuracy_curve(summary: Mapping[str, Any]) -> list[float]:
    """Central accuracy after each committed round of a finished run."""
    return [float(r["accuracy"]) for r in summary["rounds"]]


@dataclass(frozen=True)
class SeedRow:
    """One spec across partition seeds: final and last-3 accuracy per seed."""

    spec: str
    finals: tuple[float, ...]
    last3s: tuple[float, ...]

    @property
    def mean_final(self) -> float:
        return float(np.mean(self.finals))

    @property
    def mean_last3(self) -> float:
        return float(np.mean(self.last3s))


def seed_rows(curves: Mapping[str, Sequence[Sequence[float]]]) -> list[SeedRow]:
    """Per spec, its accuracy curves (one per seed, in seed order) summarised."""
    return [SeedRow(spec, tuple(c[-1] for c in runs), tuple(float(np.mean(c[-3:])) for c in runs))
            for spec, runs in curves.items()]


def seed_table(rows: Sequence[SeedRow]) -> list[list[object]]:
    """Cells of the across-seeds table; the first row is the reference (``none``)."""
    ref = rows[0]
    return [[r.spec, *(round(100 * f, 2) for f in r.finals), round(100 * r.mean_final, 2),
             round(100 * r.mean_last3, 2), round(100 * (ref.mean_final - r.mean_final), 2) + 0.0]
            for r in rows]  # + 0.0: no "-0" when a row ties with the reference


def make_row(label: str, kind: str, spec: str, summary: Mapping[str, Any], dense: int,
             payload: int | None, clients: float | None) -> Row:
    """Summarise one run; raises ConfigError if a round lost devices (rows would not compare)."""
    rounds = summary["rounds"]
    if not rounds:
        raise ConfigError(f"{label}: no committed rounds (status {summary.get('status')})")
    short = [r["round"] for r in rounds if r["reported"] != r["selected"]]
    if short:
        raise ConfigError(f"{label}: rounds {short} aggregated fewer devices than selected")
    acc = accuracy_curve(summary)
    up = sum(r["uplink_bytes"] for r in rounds)
    per_device = up / sum(r["reported"] for r in rounds)
    return Row(label=label, kind=kind, spec=spec, final_accuracy=acc[-1],
               last3_accuracy=float(np.mean(acc[-3:])), wire_bytes_per_device=per_device,
               wire_ratio=dense / per_device, payload_bytes=payload,
               payload_ratio=None if payload is None else dense / payload,
               cumulative_uplink_mb=up / 1e6, client_overlap=clients,
               wall_s=float(summary.get("wall_time_s", 0.0)))


def pick_best(rows: Sequence[Row], candidates: Sequence[str]) -> Row | None:
    """Highest final accuracy among candidate rows with wire ratio >= GOAL_RATIO."""
    ok = [r for r in rows if r.spec in candidates and r.kind == "fedge"
          and r.wire_ratio >= GOAL_RATIO]
    return max(ok, key=lambda r: (r.final_accuracy, -(r.payload_bytes or 0)), default=None)


def run_tff_anchor(s: Setting, artifact: Path, plan: list[list[int]], quantize_all: bool,
                   out: Path, reuse: bool) -> dict[str, Any]:
    """Run the TFF anchor in a child process (TF/TFF and worker_binary stay out of ours)."""
    cfg = {"artifact": str(artifact), "devices": s.devices, "rounds": len(plan),
           "clients_per_round": s.clients_per_round, "local_epochs": s.local_epochs, "lr": s.lr,
           "seed": s.seed, "partition": s.partition, "quantize_all": quantize_all,
           "schedule": plan}
    out.mkdir(parents=True, exist_ok=True)
    cfg_file, result = out / "anchor_config.json", out / "summary.json"
    if reuse and result.exists() and cfg_file.exists() and json.loads(cfg_file.read_text()) == cfg:
        logging.getLogger("fedge.bench").warning("reusing %s", result)
        return dict(json.loads(result.read_text()))
    result.unlink(missing_ok=True)
    cfg_file.write_text(json.dumps(cfg))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", "fedge.tools.bench.tff_compression_anchor",
                    "--config", str(cfg_file), "--out", str(result)],
                   check=True, env=env, timeout=3600)
    return dict(json.loads(result.read_text()))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="accuracy vs uplink bytes of codec specs")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK.devices} devices, {QUICK.rounds} rounds, "
                        f"{QUICK.clients_per_round} per round, one candidate")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--epochs", type=int, help="override the local epochs")
    p.add_argument("--lr", type=float, help="override the client learning rate")
    p.add_argument("--specs", help="comma-separated required specs (default: the issue's five)")
    p.add_argument("--candidates", help="comma-separated candidates for the best setting")
    p.add_argument("--ceiling", help="comma-separated ceiling rows (default: "
                                     f"{','.join(CEILING)}; none with --quick)")
    p.add_argument("--extra-seeds", default="",
                   help="comma-separated partition seeds to run the required and candidate "
                        "specs on as well (an across-seeds table of their means)")
    p.add_argument("--no-tff", action="store_true", help="skip the TFF anchor rows")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs in OUT/compression-runs with the identical config")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results directory")
    p.add_argument("--plot", type=Path,
                   help=f"plot PNG (default: {DOC_PLOT} for full runs, OUT/... for --quick)")
    return p.parse_args(argv)


def run_extra_seeds(s: Setting, specs: Sequence[str], seeds: Sequence[int],
                    first: Mapping[str, Mapping[str, Any]], out: Path,
                    reuse: bool) -> list[SeedRow]:
    """Run ``specs`` on every seed of ``seeds`` (``first`` holds the main seed's runs)."""
    curves = {spec: [accuracy_curve(first[spec])] for spec in specs}
    for seed in seeds:
        for spec in specs:
            print(f"[compression] seed {seed}: {spec} ...", flush=True)
            run = run_spec(replace(s, seed=seed), spec, out / f"seed{seed}", reuse)
            curves[spec].append(accuracy_curve(run))
    return seed_rows(curves)


def goal_on_means(across: Sequence[SeedRow], rows: Sequence[Row], candidates: Sequence[str],
                  seeds: Sequence[int]) -> str:
    """The goal judged on mean final accuracy over ``seeds`` (wire ratios from ``rows``)."""
    ratio = {r.spec: r.wire_ratio for r in rows if r.kind == "fedge"}
    fits = [r for r in across if r.spec in candidates and ratio[r.spec] >= GOAL_RATIO]
    best = max(fits, key=lambda r: r.mean_final, default=None)
    if best is None:
        return f"Seeds {', '.join(map(str, seeds))}: no candidate at >= {GOAL_RATIO:.0f}x."
    gap = across[0].mean_final - best.mean_final
    return (f"Seeds {', '.join(map(str, seeds))}; best candidate at >= {GOAL_RATIO:.0f}x by mean "
            f"final accuracy: {best.spec}, {100 * abs(gap):.2f} points "
            f"{'below' if gap > 0 else 'above'} none (goal "
            f"{'met' if gap <= GOAL_POINTS / 100 else 'not met'}).")


def _specs(text: str | None, default: Sequence[str]) -> list[str]:
    specs = default if text is None else [t.strip() for t in text.split(",") if t.strip()]
    for spec in specs:
        parse_spec(spec)  # CodecError naming the bad token
    return list(specs)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every row; print the table; write JSON, a Markdown table and the plot."""
    args = parse_args(argv)
    quiet_logs()
    base = QUICK if args.quick else FULL
    s = replace(base, rounds=args.rounds or base.rounds,
                local_epochs=args.epochs or base.local_epochs, lr=args.lr or base.lr)
    required = _specs(args.specs, REQUIRED)
    candidates = _specs(args.candidates, CANDIDATES[:1] if args.quick else CANDIDATES)
    ceiling = _specs(args.ceiling, () if args.quick else CEILING)
    if required[0] != "none":
        raise ConfigError("the first required spec must be 'none' (the reference row)")
    name = "compression-quick" if args.quick else "compression"
    runs_dir = args.out / f"{name}-runs"
    load_before = machine_load()
    t0 = time.time()
    summaries: dict[str, dict[str, Any]] = {}
    for spec in dict.fromkeys(required + candidates + ceiling):
        print(f"[compression] {spec}: {s.rounds} rounds ...", flush=True)
        summaries[spec] = run_spec(s, spec, runs_dir, args.reuse)
        acc = summaries[spec]["final_accuracy"]
        print(f"[compression] {spec}: final accuracy {acc}", flush=True)
    artifact = cached_artifact_dir("cnn-fmnist", 32, s.seed)  # where run_sim exported it
    delta = sample_delta(artifact, runs_dir / slug("none") / "devices" / "dev-00000", s)
    shapes = [d.shape for d in delta]
    dense = dense_float32_bytes(shapes)
    plans = {spec: schedule(runs_dir / slug(spec)) for spec in summaries}
    rows = [make_row(spec, "fedge", spec, summ, dense, payload_bytes(spec, delta),
                     client_overlap(plans[spec], plans["none"]))
            for spec, summ in summaries.items()]
    best = pick_best(rows, candidates)
    plot_runs = {spec: summ for spec, summ in summaries.items()}
    if not args.no_tff:
        for quantize_all, label in ((False, "TFF compression_aggregator()"),
                                    (True, "TFF same, all tensors q8")):
            print(f"[compression] {label} ...", flush=True)
            summ = run_tff_anchor(s, artifact, plans["none"], quantize_all,
                                  runs_dir / ("tff-q8-all" if quantize_all else "tff-stock"),
                                  args.reuse)
            rows.append(make_row(label, "tff", "tff-q8-all" if quantize_all else "tff-stock", summ,
                                 dense, None, 1.0))
            plot_runs[label] = summ
    none = rows[0]
    plot = args.plot or (args.out / "compression_quick.png" if args.quick else DOC_PLOT)
    plot_accuracy_vs_bytes(plot_runs, plot)
    table = [r.cells() for r in rows]
    if best is not None:
        table.append([f"best: {best.label}", *best.cells()[1:]])
    command = command_line("tools.bench.compression")
    goal_met = best is not None and none.final_accuracy - best.final_accuracy <= GOAL_POINTS / 100
    goal_last3 = best is not None and none.last3_accuracy - best.last3_accuracy <= GOAL_POINTS / 100
    tail = [r["accuracy"] for r in summaries["none"]["rounds"][-5:]]
    noise = 100 * float(np.std(tail))
    params = sum(int(np.prod(x)) for x in shapes)
    note = (f"cnn-fmnist ({params:,} params, dense float32 {dense:,} B), "
            f"{s.devices} devices, {s.partition}, {s.clients_per_round} per round, "
            f"{s.rounds} rounds, "
            f"{s.local_epochs} local epoch(s), lr {s.lr}, seed {s.seed}; accuracies in %. "
            f"Goal (wire bytes >= {GOAL_RATIO:.0f}x fewer, within {GOAL_POINTS:g} point of none), "
            f"best candidate {best.label if best else '-'}: "
            f"{'met' if goal_met else 'not met'} on final accuracy, "
            f"{'met' if goal_last3 else 'not met'} on the last-3 mean; round-to-round std of "
            f"none over its last {len(tail)} rounds: {noise:.1f} points. "
            f"Load before {load_before['loadavg']}, "
            f"after {machine_load()['loadavg']}; total {time.time() - t0:.0f} s.")
    print_table("compression: accuracy vs uplink bytes", COLUMNS, table, command, note)
    extra = [int(x) for x in args.extra_seeds.split(",") if x.strip()]
    across: list[SeedRow] = []
    seeds_md = ""
    if extra:
        across = run_extra_seeds(s, list(dict.fromkeys(required + candidates)), extra,
                                 summaries, runs_dir, args.reuse)
        seed_columns = ("row", *(f"seed {x}" for x in [s.seed, *extra]), "mean final",
                        "mean last-3", "points below none")
        seed_cells = seed_table(across)
        seed_note = goal_on_means(across, rows, candidates, [s.seed, *extra])
        print_table("compression across seeds (final accuracy %)", seed_columns, seed_cells,
                    command, seed_note)
        seeds_md = f"\n\n{markdown_table(seed_columns, seed_cells)}\n\n{seed_note}"
    payload = {"command": command, "setting": asdict(s), "dense_float32_bytes": dense,
               "params": params,
               "rows": [asdict(r) for r in rows], "best": None if best is None else best.label,
               "goal_met": goal_met, "goal_met_last3": goal_last3,
               "none_round_std_points": noise,
               "across_seeds": [asdict(r) for r in across], "load_before": load_before, "load_after": machine_load(),
               "curves": {label: [(r["round"], r["accuracy"], r["uplink_bytes"])
                                  for r in summ["rounds"]] for label, summ in plot_runs.items()},
               "plot": str(plot)}
    path = write_json(args.out, f"{name}.json", payload)
    (args.out / f"{name}.md").write_text(markdown_table(COLUMNS, table) + f"\n\n{note}"
                                          f"{seeds_md}\n\n`{command}`\n")
    print(f"wrote {path}, {args.out / f'{name}.md'} and {plot}")


if __name__ == "__main__":
    main()
