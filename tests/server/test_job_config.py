"""job.toml parsing and validation: good files load, every bad value is a ConfigError."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from fedge.edge_client.errors import ConfigError
from fedge.edge_client.protocol import messages as m
from fedge.server.job import (
    JobConfig,
    SelectionConfig,
    TrainingConfig,
    job_from_dict,
    load_job_config,
    parse_job_config,
)

GOOD_TOML = """
[job]
name = "digits"
fleet = "lab"
artifact = "models/mlp"
rounds = 12
seed = 4
codec = "topk:0.1+q8"

[selection]
target_reports = 20
over_selection = 1.3
min_reports = 15
round_deadline_s = 90.0
require_charging = true
min_battery = 0.5

[training]
local_epochs = 2
lr = 0.2
lr_schedule = "step"
lr_decay = 0.5
lr_step_rounds = 4
max_steps = 100

[server_optimizer]
name = "fedyogi"
lr = 0.01
beta1 = 0.8

[evaluation]
central_every = 2
central_data = "data/test.npz"
federated_every = 3
"""

MIN = {"job": {"name": "j", "fleet": "f", "artifact": "a", "rounds": 3}}


def with_(table: str, **values: Any) -> dict[str, Any]:
    return {**MIN, table: {**MIN.get(table, {}), **values}}


def test_good_job_toml_loads_with_paths_resolved(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(GOOD_TOML)
    job = load_job_config(path)
    assert (job.name, job.fleet, job.rounds, job.seed, str(job.codec)) == (
        "digits", "lab", 12, 4, "topk:0.1+q8")  # the spec arrives parsed, once
    assert job.artifact == tmp_path / "models/mlp"
    assert job.evaluation.central_data == str(tmp_path / "data/test.npz")
    assert job.selection.require_charging and job.selection.min_battery == 0.5
    assert job.selection.selected_per_round == 26  # ceil(20 * 1.3)
    assert job.optimizer.name == "fedyogi" and job.optimizer.beta1 == 0.8
    assert job.optimizer.beta2 == 0.99  # default kept
    assert job_from_dict(job.to_dict()) == job


def test_defaults_fill_missing_tables(tmp_path: Path) -> None:
    job = parse_job_config(MIN, tmp_path)
    assert job.selection == SelectionConfig() and job.training == TrainingConfig()
    assert job.artifact == tmp_path / "a"
    assert job_from_dict(job.to_dict()) == job


@pytest.mark.parametrize("target, factor, expected", [(10, 1.3, 13), (10, 1.0, 10), (3, 1.01, 4),
                                                      (1, 1.5, 2)])
def test_selected_per_round(target: int, factor: float, expected: int) -> None:
    sel = SelectionConfig(target_reports=target, over_selection=factor, min_reports=1)
    assert sel.selected_per_round == expected


@pytest.mark.parametrize("schedule, rounds_to_lr", [
    ("constant", {1: 0.4, 2: 0.4, 9: 0.4}),
    ("exponential", {1: 0.4, 2: 0.2, 4: 0.05}),
    ("step", {1: 0.4, 3: 0.4, 4: 0.2, 6: 0.2, 7: 0.1}),
    ("inverse_sqrt", {1: 0.4, 4: 0.2, 16: 0.1}),
])
def test_learning_rate_schedules(schedule: str, rounds_to_lr: dict[int, float]) -> None:
    t = TrainingConfig(lr=0.4, lr_schedule=schedule, lr_decay=0.5, lr_step_rounds=3)
    for rnd, lr in rounds_to_lr.items():
        assert math.isclose(t.lr_for_round(rnd), lr), (schedule, rnd)


BAD = [
    ("no job table", {"selection": {}}, r"needs a \[job\] table"),
    ("unknown job key", {"job": {**MIN["job"], "epochs": 3}}, "unknown keys"),
    ("missing rounds", {"job": {"name": "j", "fleet": "f", "artifact": "a"}}, "missing 'rounds'"),
    ("bad name", {"job": {**MIN["job"], "name": "my job"}}, "invalid job name"),
    ("bad fleet", {"job": {**MIN["job"], "fleet": "a/b"}}, "invalid fleet"),
    ("selection not a table", {**MIN, "selection": 3}, r"\[selection\] must be a table"),
    ("unknown selection key", with_("selection", targets=3), "unknown keys"),
    ("zero rounds", {"job": {**MIN["job"], "rounds": 0}}, "job.rounds"),
    ("float rounds", {"job": {**MIN["job"], "rounds": 2.5}}, "job.rounds"),
    ("min above target", with_("selection", target_reports=5, min_reports=6), "min_reports"),
    ("under-selection", with_("selection", over_selection=0.9), "over_selection"),
    ("negative deadline", with_("selection", round_deadline_s=-1.0), "timeouts"),
    ("no attempts", with_("selection", max_attempts=0), "max_attempts"),
    ("battery above 1", with_("selection", min_battery=1.5), "min_battery"),
    ("zero epochs", with_("training", local_epochs=0), "local_epochs"),
    ("zero lr", with_("training", lr=0.0), "training.lr"),
    ("nan lr", with_("training", lr=math.nan), "training.lr"),
    ("unknown schedule", with_("training", lr_schedule="cosine"), "lr_schedule"),
    ("decay above 1", with_("training", lr_decay=1.5), "lr_decay"),
    ("zero example weight", with_("training", max_example_weight=0), "max_example_weight"),
    ("unknown optimizer", with_("server_optimizer", name="sgd"), "server_optimizer.name"),
    ("zero server lr", with_("server_optimizer", lr=0.0), "server_optimizer.lr"),
    ("momentum 1", with_("server_optimizer", momentum=1.0), "momentum"),
    ("beta2 1", with_("server_optimizer", beta2=1.0), "betas"),
    ("zero epsilon", with_("server_optimizer", epsilon=0.0), "epsilon"),
    # wrong types must be ConfigErrors too, not TypeErrors or silent acceptance
    ("bool rounds", {"job": {**MIN["job"], "rounds": True}}, "job.rounds"),
    ("text seed", {"job": {**MIN["job"], "seed": "abc"}}, "seed"),
    ("numeric artifact", {"job": {**MIN["job"], "artifact": 5}}, "artifact"),
    ("text over_selection", with_("selection", over_selection="x"), "over_selection"),
    ("text deadline", with_("selection", round_deadline_s="x"), "round_deadline_s|timeouts"),
    ("text lr", with_("training", lr="0.1"), "training.lr"),
    ("unknown codec", {"job": {**MIN["job"], "codec": "zip"}}, "codec"),
    ("pred without downlink", {"job": {**MIN["job"], "codec": "topk:0.01+q4+pred"}},
     "set job.downlink"),
    ("pred with secagg",
     {"job": {**MIN["job"], "codec": "randk:0.1+q8+pred", "downlink": "q8"},
      "secagg": {"enabled": True}}, "pred is not used with secure aggregation"),
    ("zero lr_step_rounds", with_("training", lr_schedule="step", lr_step_rounds=0),
     "lr_step_rounds"),
]


@pytest.mark.parametrize("raw, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_job_config_is_a_config_error(tmp_path: Path, raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_job_config(raw, tmp_path)


def test_unreadable_job_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_job_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[job\nname=")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_job_config(tmp_path / "bad.toml")


@pytest.mark.parametrize("training", [
    {"max_steps": 0}, {"lr": 200.0}, {"local_epochs": 5000}, {"max_steps": 10**10},
    {"lr": 100.0, "max_steps": 1, "local_epochs": 1000},
])
def test_a_valid_job_only_makes_plans_that_devices_accept(tmp_path: Path,
                                                          training: dict[str, Any]) -> None:
    """Either the job is refused up front, or every round's plan passes device validation."""
    try:
        job: JobConfig = parse_job_config(with_("training", **training), tmp_path)
    except ConfigError:
        return
    t = job.training
    for rnd in range(1, job.rounds + 1):
        plan = m.TrainingPlan(epochs=t.local_epochs, lr=t.lr_for_round(rnd), max_steps=t.max_steps,
                              shuffle=t.shuffle)
        assert m.TrainingPlan.from_body(asdict(plan)) == plan
