"""The simulator end to end: deterministic for a seed; dropouts, availability and links matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.firmware_sim.availability import pattern_availability
from fedge.firmware_sim.clock import ScaledClock
from fedge.firmware_sim.hooks import SimHooks
from fedge.firmware_sim.profiles import get_profile
from fedge.firmware_sim.sim import SimConfig, run_sim

TIMING_KEYS = {"duration_s", "wall_time_s", "sim_compute_s", "sim_upload_s"}


def _strip_timing(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: _strip_timing(v) for k, v in value.items() if k not in TIMING_KEYS and k != "out"
        }
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def small_config(out: Path, artifact: Path, **overrides: object) -> SimConfig:
    base = dict(
        out=out,
        devices=8,
        rounds=3,
        clients_per_round=4,
        over_selection=1.0,
        partition="iid",
        profiles="android-high",
        availability="always",
        dropout=0.0,
        local_epochs=2,
        lr=0.2,
        seed=5,
        artifact=artifact,
        progress=False,
        workers=2,
        round_deadline_s=20.0,
    )
    base.update(overrides)
    return SimConfig(**base)  # type: ignore[arg-type]


def test_small_run_is_deterministic_for_a_seed(tmp_path, mlp_artifact):
    first = run_sim(small_config(tmp_path / "a", mlp_artifact))
    second = run_sim(small_config(tmp_path / "b", mlp_artifact))
    assert first["status"] == "finished" and len(first["rounds"]) == 3
    assert _strip_timing(first) == _strip_timing(second)
    for name in (
        "summary.json",
        "rounds.csv",
        "accuracy_loss.png",
        "participation.png",
        "bytes.png",
    ):
        assert (tmp_path / "a" / name).stat().st_size > 0
    other_seed = run_sim(small_config(tmp_path / "c", mlp_artifact, seed=6))
    assert _strip_timing(other_seed)["rounds"] != _strip_timing(first)["rounds"]


def test_dropout_and_availability_change_who_reports(tmp_path, mlp_artifact):
    trace = tmp_path / "trace.csv"  # three devices are never online during the run
    trace.write_text(
        "device_id,start_s,end_s\n"
        + "".join(f"dev-{i:05d},1000000000,1000000001\n" for i in range(3))
    )
    summary = run_sim(
        small_config(
            tmp_path / "run",
            mlp_artifact,
            devices=10,
            rounds=3,
            clients_per_round=3,
            over_selection=1.0,
            dropout=0.35,
            trace=trace,
            round_deadline_s=5.0,
        )
    )
    devices = summary["devices"]
    never = [f"dev-{i:05d}" for i in range(3)]
    assert all(devices[d]["rounds_reported"] == 0 and devices[d]["dropouts"] == 0 for d in never)
    assert sum(devices[d]["rounds_reported"] for d in devices if d not in never) > 0
    dropped = sum(r["dropped"] for r in summary["rounds"]) + sum(
        r["dropped"] for r in summary["failed_rounds"]
    )
    assert dropped > 0
    assert sum(d["dropouts"] for d in devices.values()) >= dropped


def test_profile_bandwidth_changes_simulated_upload_time():
    clock = ScaledClock(speedup=1e9)
    times = {}
    for name in ("pi-zero-2w", "android-high"):
        hooks = SimHooks(
            get_profile(name), pattern_availability("always", 0), clock, np.random.default_rng(0)
        )
        import asyncio

        asyncio.run(hooks.after_transfer(1_000_000, "up"))
        times[name] = hooks.sim_transfer_s["up"]
    assert times["pi-zero-2w"] > 2 * times["android-high"] > 0


def test_secure_run_with_dropouts_matches_plain_run(tmp_path, mlp_artifact):
    common = dict(
        devices=20,
        rounds=4,
        clients_per_round=10,
        over_selection=1.3,
        dropout=0.2,
        local_epochs=5,
        lr=0.2,
        round_deadline_s=20.0,
        partition="iid",
    )
    secure = run_sim(small_config(tmp_path / "secure", mlp_artifact, secagg=True,
                                  secagg_stage_timeout_s=6.0, **common))
    plain = run_sim(
        small_config(tmp_path / "plain", mlp_artifact, compression="clip:2+q16", **common)
    )
    assert secure["status"] == "finished"
    assert [r["round"] for r in secure["rounds"]] == [1, 2, 3, 4]  # every round committed
    dropped = sum(d["dropouts"] for d in secure["devices"].values())
    assert dropped > 0  # devices really vanished at some protocol stage
    assert secure["final_accuracy"] >= 0.6
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.1


def test_predictive_coding_starts_training_from_the_prediction(tmp_path, mlp_artifact):
    """``pred`` devices start from the global weights plus a share of the previous global
    step, which the server adds back. Round 1 has no previous step, so it trains exactly as
    without ``pred``; from round 2 on the devices start elsewhere, so training differs, and
    it still converges."""
    common = dict(rounds=4, downlink="q16", seed=6)
    plain = run_sim(small_config(tmp_path / "plain", mlp_artifact, compression="q16", **common))
    pred = run_sim(small_config(tmp_path / "pred", mlp_artifact, compression="q16+pred",
                                **common))
    assert plain["status"] == pred["status"] == "finished"
    first_plain, first_pred = plain["rounds"][0], pred["rounds"][0]
    assert first_pred["train_loss"] == pytest.approx(first_plain["train_loss"], rel=1e-3)
    assert first_pred["loss"] == pytest.approx(first_plain["loss"], rel=1e-3)
    assert any(a["train_loss"] != pytest.approx(b["train_loss"], rel=1e-3)
               for a, b in zip(plain["rounds"][1:], pred["rounds"][1:], strict=True))
    assert pred["rounds"][-1]["loss"] < pred["rounds"][0]["loss"]
    assert pred["final_accuracy"] >= plain["final_accuracy"] - 0.05


@pytest.mark.parametrize("compression", ["topk:0.05+q8", "topk:0.05+q8+pred"])
def test_compressed_run_converges(tmp_path, mlp_artifact, compression):
    summary = run_sim(small_config(tmp_path / "run", mlp_artifact, devices=12, rounds=8,
                                   clients_per_round=6, local_epochs=5, lr=0.2, partition="iid",
                                   compression=compression, downlink="q8",
                                   federated_eval_every=4))
    dense = 4 * summary["params"]
    per_device = [r["uplink_bytes"] / r["reported"] for r in summary["rounds"]]
    assert summary["final_accuracy"] >= 0.75
    assert max(per_device) < dense / 8  # far below dense float32, envelope included
    evaluations = summary["federated_evaluation"]  # devices evaluated on their own test splits
    assert [e["round"] for e in evaluations] == [4, 8]
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in evaluations)
