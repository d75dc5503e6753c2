"""A task's secure-aggregation and DP settings are typed sub-messages, checked when parsed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.privacy import select_distributed_params
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol.envelope import SERVER_ID, unpack
from fedge.edge_client.secagg import SecAggConfig

REF = m.BlobRef(sha256="ab" * 32, url="http://127.0.0.1/v1/blobs/" + "ab" * 32,
                signature=b"s" * 64, size=10)
SECAGG = m.SecAggTask(round_id="j.1.1", config=SecAggConfig(fleet="lab", dimension=101), clip=2.0,
                      bits=16, n_max=13, max_weight=400, stage_timeout_s=15.0)
PARAMS = select_distributed_params(1.0, 10, 100, 1.0, bits=20)


def task(**overrides: Any) -> m.Task:
    fields: dict[str, Any] = dict(kind="train", model=REF, manifest=REF, weights=REF,
                                  plan=m.TrainingPlan(epochs=1, lr=0.1), codec="none",
                                  deadline=time.time() + 60, round_seed=5)
    return m.Task(**{**fields, **overrides})


def reparsed(message: m.Task) -> m.Message:
    """The task as a device reads it off the wire."""
    packed = m.make(message, job_id="j", round_id=1).pack()
    return m.parse(unpack(packed, SERVER_ID))


@pytest.mark.parametrize("settings", [
    {"secagg": SECAGG},
    {"dp": m.DPTask(mode="central", clip=0.5)},
    {"secagg": SECAGG, "dp": m.DPTask(mode="distributed", clip=1.0, params=PARAMS)},
])
def test_typed_settings_round_trip(settings: dict[str, Any]) -> None:
    original = task(**settings)
    assert reparsed(original) == original


def _body_with(key: str, value: Any) -> dict[str, Any]:
    body = task(secagg=SECAGG, dp=m.DPTask(mode="central", clip=0.5)).to_body()
    assert isinstance(body, dict)
    body[key] = {**body[key], **value} if isinstance(value, dict) else value
    return body


BAD = [
    ("secagg", {"bits": 0}, "field 'bits'=0 outside"),
    ("secagg", {"bits": 25}, "field 'bits'=25 outside"),
    ("secagg", {"clip": -1.0}, "must be positive"),
    ("secagg", {"n_max": 0}, "n_max"),
    ("secagg", {"max_weight": 0}, "max_weight"),
    ("secagg", {"stage_timeout_s": 0.0}, "stage_timeout_s"),
    ("secagg", {"config": {"fleet": "lab"}}, "secagg.config"),
    ("secagg", {"extra": 1}, "unknown field 'extra'"),
    ("secagg", {"round_id": 5}, "field 'round_id' has type int"),
    ("dp", {"mode": "local"}, "field 'mode' must be one of"),
    ("dp", {"clip": 0.0}, "must be positive"),
    ("dp", {"params": PARAMS.to_dict()}, "central ones do not"),
    ("dp", {"mode": "distributed"}, "distributed DP tasks carry 'params'"),
    ("dp", {"mode": "distributed", "params": {**PARAMS.to_dict(), "bits": "x"}}, "dp.params"),
    ("secagg", "on", "field 'secagg' has type str"),
]


@pytest.mark.parametrize("key, value, match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_malformed_settings_are_refused_when_the_task_is_parsed(
    key: str, value: Any, match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        m.Task.from_body(_body_with(key, value), m.DEFAULT_LIMITS)
