"""DP end to end in the simulator: epsilon per round, the budget stop, and refused combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.sim import SimConfig, prepare, run_sim
from fedge.server.job import JobConfig, parse_job_config
from fedge.server.privacy.job_privacy import job_privacy_for, privacy_for_job

DEVICES = 20
CLIENTS = 8


def dp_config(out: Path, artifact: Path, dp: str, rounds: int) -> SimConfig:
    return SimConfig(
        out=out,
        devices=DEVICES,
        rounds=rounds,
        clients_per_round=CLIENTS,
        over_selection=1.25,
        min_report_fraction=0.6,
        partition="iid",
        profiles="android-high",
        availability="always",
        dropout=0.0,
        local_epochs=5,
        lr=0.2,
        seed=3,
        artifact=artifact,
        progress=False,
        workers=2,
        round_deadline_s=20.0,
        secagg_stage_timeout_s=6.0,
        dp=dp,
    )


def expected_epsilons(tmp_path: Path, artifact: Path, spec: str, rounds: int) -> list[float]:
    """Epsilon after each round from the controller the coordinator builds for the sim's job."""
    plan = prepare(dp_config(tmp_path / "plan", artifact, spec, rounds), "mqtt://127.0.0.1:1")
    dp = privacy_for_job(plan.job, plan.params)
    assert dp is not None
    accountant = dp.ensure_accountant(DEVICES, rounds_done=0)
    return [accountant.epsilon_after(t) for t in range(1, rounds + 1)]


@pytest.mark.parametrize(
    "spec",
    ["distributed:z=0.5,clip=2.0", "central:z=0.5,clip=2.0"],
    ids=["distributed", "central"],
)
def test_job_learns_reports_epsilon_and_stops_at_the_budget(
    tmp_path: Path, mlp_artifact: Path, spec: str
) -> None:
    eps = expected_epsilons(tmp_path, mlp_artifact, spec, 4)
    budget = (eps[2] + eps[3]) / 2  # three rounds fit, the fourth does not
    summary = run_sim(
        dp_config(tmp_path / "run", mlp_artifact, f"{spec},target_eps={budget!r}", rounds=10)
    )

    assert summary["status"] == "finished"
    assert "privacy budget reached" in summary["status_reason"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]  # the fourth round would exceed the budget
    epsilons = [r["epsilon"] for r in rounds]
    assert epsilons == pytest.approx(eps[:3], rel=1e-9)
    assert epsilons[-1] <= budget
    # Noisy (central DP draws its noise from OS randomness): five runs of the central case
    # ended at 0.32-0.56 after its three rounds; twice chance (0.1) still shows it learns.
    assert summary["final_accuracy"] >= 0.2


def test_distributed_run_is_secure_and_uniformly_weighted(tmp_path: Path, mlp_artifact: Path) -> None:
    summary = run_sim(dp_config(tmp_path / "run", mlp_artifact, "distributed:0.3:2.0", rounds=2))
    assert summary["status"] == "finished"
    assert summary["config"]["dp"] == "distributed:0.3:2.0"
    for r in summary["rounds"]:
        assert r["reported"] >= CLIENTS  # the secure sum holds at least the expected devices
        # every device's noisy vector (padded to 4096 coordinates) went over MQTT, encrypted
        # shares and masks included: far more than a dense float32 update
        assert r["uplink_bytes"] / r["reported"] > 4 * 4096


def _job(artifact: Path, dp: str, codec: str = "none", secagg: bool = False) -> JobConfig:
    job = {"name": "j", "fleet": "f", "artifact": str(artifact), "rounds": 1, "codec": codec}
    tables = {"job": {**job, "dp": dp}, "secagg": {"enabled": True} if secagg else {}}
    return parse_job_config(tables, artifact)


@pytest.mark.parametrize(
    ("dp", "codec", "secagg", "message"),
    [
        ("distributed:1:1", "none", False, "needs secure aggregation"),
        ("distributed:1:1", "topk:0.1+q8", True, "set codec = 'none'"),
        ("central:1:1", "none", True, "use distributed DP with secure aggregation"),
        ("distributed:1:1:adaptive=0.5", "none", True, "adaptive clipping needs central DP"),
        ("central:1:1:bits=16", "none", False, "bits is not valid with central DP"),
    ],
)
def test_invalid_combinations_are_config_errors(
    mlp_artifact: Path, dp: str, codec: str, secagg: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _job(mlp_artifact, dp, codec, secagg)


def test_ring_too_small_for_the_cohort_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ring"):
        job_privacy_for(
            "distributed:1:1:bits=8",
            expected_clients=50,
            max_clients=60,
            min_clients=40,
            dim=100_000,
        )
