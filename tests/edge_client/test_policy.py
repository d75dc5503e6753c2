"""The device's fleet policy refuses tasks whose protection is below its floors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fedge.edge_client.config import parse_device_config
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.policy import FleetPolicy
from fedge.edge_client.privacy import select_distributed_params
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.secagg import SecAggConfig

REF = m.BlobRef(sha256="ab" * 32, url="http://127.0.0.1/v1/blobs/" + "ab" * 32,
                signature=b"s" * 64, size=10)


def task(secagg: dict[str, Any] | None = None, z: float | None = None, clients: int = 10) -> m.Task:
    config = SecAggConfig(fleet="lab", dimension=1025, **(secagg or {}))
    sec = m.SecAggTask(round_id="j.1.1", config=config, clip=1.0, bits=16, n_max=13,
                       max_weight=1, stage_timeout_s=5.0)
    dp = None
    if z is not None:
        params = select_distributed_params(1.0, clients, 1000, z, bits=20)
        dp = m.DPTask(mode="distributed", clip=1.0, params=params)
    return m.Task(kind="train", model=REF, manifest=REF, weights=REF,
                  plan=m.TrainingPlan(epochs=1, lr=0.1), codec="none",
                  deadline=time.time() + 60, round_seed=1,
                  secagg=sec if secagg is not None else None, dp=dp)


def test_a_task_at_the_floors_is_accepted() -> None:
    policy = FleetPolicy(min_cohort=5, min_corrupt_fraction=0.1, min_security_bits=40)
    assert policy.refusal(task({"min_clients": 5, "corrupt_fraction": 0.1})) is None
    assert FleetPolicy().refusal(task()) is None  # plain tasks meet any policy


@pytest.mark.parametrize("secagg, match", [
    ({"min_clients": 4}, "min_clients 4 is below the policy's min_cohort 5"),
    ({"min_clients": 5, "corrupt_fraction": 0.05}, "corrupt_fraction 0.05 is below"),
    ({"min_clients": 5, "corrupt_fraction": 0.1, "security_bits": 20}, "security_bits 20"),
])
def test_secure_settings_below_the_floors_are_refused(secagg: dict[str, Any], match: str) -> None:
    policy = FleetPolicy(min_cohort=5, min_corrupt_fraction=0.1, min_security_bits=40)
    why = policy.refusal(task(secagg))
    assert why is not None and match in why


def test_distributed_noise_is_judged_at_the_smallest_released_sum() -> None:
    policy = FleetPolicy(min_noise_multiplier=0.5)
    # z = 1.0 split over 10 devices; a sum of min_clients = 3 carries 1.0 * sqrt(3 / 10) = 0.55
    assert policy.refusal(task({"min_clients": 3}, z=1.0)) is None
    # z = 1.0 split over 100 devices: a sum of 3 carries 0.17, below the floor
    why = policy.refusal(task({"min_clients": 3}, z=1.0, clients=100))
    assert why is not None and "noise multiplier 0.173" in why


def test_the_policy_comes_from_device_toml(tmp_path: Path) -> None:
    raw = {"device": {"id": "d", "fleet": "f"}, "broker": {"url": "mqtt://h"},
           "data": {"train": "t.npz"}, "policy": {"min_cohort": 7, "min_noise_multiplier": 0.8}}
    policy = parse_device_config(raw, tmp_path).policy
    assert (policy.min_cohort, policy.min_noise_multiplier) == (7, 0.8)
    with pytest.raises(ConfigError, match="policy.min_cohort must be >= 2"):
        parse_device_config({**raw, "policy": {"min_cohort": 1}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown policy settings"):
        parse_device_config({**raw, "policy": {"min_clients": 3}}, tmp_path)
