"""The compression benchmark's runs: one simulation per spec, its schedule, a real update, TFF."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.codec import UpdateEncoder, dense_float32_bytes, parse_spec
from fedge.firmware_sim.sim import SimConfig, cached_artifact_dir
from fedge.tools.bench._common import FleetSetting, run_or_reuse
from fedge.tools.bench._compression_rows import (
    Row,
    SeedRow,
    accuracy_curve,
    client_overlap,
    make_row,
    pick_best,
    seed_rows,
)

# Predictive coding (`pred`) predicts from the previous global step, which devices receive as
# the downlink delta: its rows send the downlink with this spec (the others send full weights).
PRED_DOWNLINK = "q8"
TFF_ROWS = ((False, "TFF compression_aggregator()"), (True, "TFF same, all tensors q8"))


def slug(spec: str) -> str:
    """A directory name for a spec (``topk:0.01+q8`` -> ``topk_0.01-q8``)."""
    return spec.replace(":", "_").replace("+", "-").replace("=", "")


def sim_config(s: FleetSetting, spec: str, out: Path) -> SimConfig:
    """The simulator configuration of one row."""
    return SimConfig(
        out=out,
        devices=s.devices,
        rounds=s.rounds,
        dataset="fashion-mnist",
        model="cnn-fmnist",
        partition=s.partition,
        clients_per_round=s.clients_per_round,
        over_selection=1.0,
        wake_all=True,
        availability="always",
        dropout=0.0,
        profiles="android-high",
        seed=s.seed,
        compression=spec,
        downlink=PRED_DOWNLINK if parse_spec(spec).predict is not None else None,
        local_epochs=s.local_epochs,
        lr=s.lr,
        progress=False,
        round_deadline_s=s.round_deadline_s,
    )


def run_spec(s: FleetSetting, spec: str, runs_dir: Path, reuse: bool) -> dict[str, Any]:
    """Simulate one spec (or reuse a finished run with the identical configuration)."""
    return run_or_reuse(sim_config(s, spec, runs_dir / slug(spec)), reuse)


def schedule(run_dir: Path) -> list[list[int]]:
    """Device indices that reported in each committed training round of a finished run."""
    from fedge.server.store import SQLiteStore

    store = SQLiteStore(run_dir / "server" / "fedge.db")
    try:
        out = []
        for rnd in store.rounds("sim", "train"):
            if rnd["state"] == "committed":
                out.append(
                    sorted(
                        int(p["device_id"].split("-")[1])
                        for p in store.participants(rnd["rid"])
                        if p["status"] == "reported"
                    )
                )
    finally:
        store.close()
    return out


def sample_delta(artifact: Path, device_dir: Path, s: FleetSetting) -> list[np.ndarray]:
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


def run_tff_anchor(
    s: FleetSetting,
    artifact: Path,
    plan: list[list[int]],
    quantize_all: bool,
    out: Path,
    reuse: bool,
) -> dict[str, Any]:
    """Run the TFF anchor in a child process (TF/TFF and worker_binary stay out of ours)."""
    cfg = {
        "artifact": str(artifact),
        "devices": s.devices,
        "rounds": len(plan),
        "clients_per_round": s.clients_per_round,
        "local_epochs": s.local_epochs,
        "lr": s.lr,
        "seed": s.seed,
        "partition": s.partition,
        "quantize_all": quantize_all,
        "schedule": plan,
    }
    out.mkdir(parents=True, exist_ok=True)
    cfg_file, result = out / "anchor_config.json", out / "summary.json"
    if reuse and result.exists() and cfg_file.exists() and json.loads(cfg_file.read_text()) == cfg:
        logging.getLogger("fedge.bench").warning("reusing %s", result)
        return dict(json.loads(result.read_text()))
    result.unlink(missing_ok=True)
    cfg_file.write_text(json.dumps(cfg))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge.tools.bench.tff_compression_anchor",
            "--config",
            str(cfg_file),
            "--out",
            str(result),
        ],
        check=True,
        env=env,
        timeout=3600,
    )
    return dict(json.loads(result.read_text()))


def run_extra_seeds(
    s: FleetSetting,
    specs: Sequence[str],
    seeds: Sequence[int],
    first: Mapping[str, Mapping[str, Any]],
    out: Path,
    reuse: bool,
) -> list[SeedRow]:
    """Run ``specs`` on every seed of ``seeds`` (``first`` holds the main seed's runs)."""
    curves = {spec: [accuracy_curve(first[spec])] for spec in specs}
    for seed in seeds:
        for spec in specs:
            print(f"[compression] seed {seed}: {spec} ...", flush=True)
            run = run_spec(replace(s, seed=seed), spec, out / f"seed{seed}", reuse)
            curves[spec].append(accuracy_curve(run))
    return seed_rows(curves)


@dataclass
class Results:
    """Every row, the summaries behind them and what the fedge rows were measured against."""

    summaries: dict[str, dict[str, Any]]
    rows: list[Row]
    best: Row | None
    dense: int
    params: int
    plot_runs: dict[str, dict[str, Any]]


def run_specs(
    s: FleetSetting, specs: Sequence[str], runs_dir: Path, reuse: bool
) -> dict[str, dict[str, Any]]:
    """Simulate every spec once, in order (a spec given twice runs once)."""
    summaries: dict[str, dict[str, Any]] = {}
    for spec in dict.fromkeys(specs):
        print(f"[compression] {spec}: {s.rounds} rounds ...", flush=True)
        summaries[spec] = run_spec(s, spec, runs_dir, reuse)
        acc = summaries[spec]["final_accuracy"]
        print(f"[compression] {spec}: final accuracy {acc}", flush=True)
    return summaries


def measure(
    s: FleetSetting,
    specs: Sequence[str],
    candidates: Sequence[str],
    runs_dir: Path,
    reuse: bool,
    tff: bool,
) -> Results:
    """Run every spec, then summarise them (and the TFF anchor rows with ``tff``)."""
    summaries = run_specs(s, specs, runs_dir, reuse)
    artifact = cached_artifact_dir("cnn-fmnist", 32, s.seed)  # where run_sim exported it
    delta = sample_delta(artifact, runs_dir / slug("none") / "devices" / "dev-00000", s)
    shapes = [d.shape for d in delta]
    dense = dense_float32_bytes(shapes)
    plans = {spec: schedule(runs_dir / slug(spec)) for spec in summaries}
    rows = [
        make_row(
            spec,
            "fedge",
            spec,
            summ,
            dense,
            payload_bytes(spec, delta),
            client_overlap(plans[spec], plans["none"]),
        )
        for spec, summ in summaries.items()
    ]
    best = pick_best(rows, candidates)
    plot_runs = {spec: summ for spec, summ in summaries.items()}
    if tff:
        for quantize_all, label in TFF_ROWS:
            print(f"[compression] {label} ...", flush=True)
            summ = run_tff_anchor(
                s,
                artifact,
                plans["none"],
                quantize_all,
                runs_dir / ("tff-q8-all" if quantize_all else "tff-stock"),
                reuse,
            )
            rows.append(
                make_row(
                    label,
                    "tff",
                    "tff-q8-all" if quantize_all else "tff-stock",
                    summ,
                    dense,
                    None,
                    1.0,
                )
            )
            plot_runs[label] = summ
    params = sum(int(np.prod(x)) for x in shapes)
    return Results(summaries, rows, best, dense, params, plot_runs)
