"""Device agent: its transition table, device.toml validation, and resuming an interrupted task."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedge_testing import LoopThread, MosquittoProcess, ServerThread, start_server

from fedge.edge_client.agent import (
    TRANSITIONS,
    AgentHooks,
    AgentState,
    DeviceAgent,
    LocalData,
)
from fedge.edge_client.config import load_device_config, parse_device_config
from fedge.edge_client.data import load_local_dataset, save_npz_dataset
from fedge.edge_client.device_main import build_agent
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.pending import PENDING_TASK
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.server.job import EvaluationConfig, JobConfig, SelectionConfig, TrainingConfig
from fedge.server.settings import ServerSettings
from fedge.server.store import SQLiteStore

REPO = Path(__file__).resolve().parents[2]
S = AgentState

# --- the transition table -----------------------------------------------------------------


def test_every_state_has_a_row_and_only_offline_starts_a_session() -> None:
    assert set(TRANSITIONS) == set(AgentState)
    assert TRANSITIONS[S.OFFLINE] == {S.CONNECTED}
    for state in AgentState:
        if state != S.OFFLINE:
            assert S.OFFLINE in TRANSITIONS[state], f"{state} cannot go offline"


@pytest.mark.parametrize("src, dst", [
    (S.OFFLINE, S.TRAINING), (S.OFFLINE, S.CHECKED_IN), (S.OFFLINE, S.REPORTING),
    (S.WAITING, S.TRAINING), (S.WAITING, S.REPORTING), (S.CHECKED_IN, S.REPORTING),
    (S.REPORTING, S.TRAINING), (S.REPORTING, S.CHECKED_IN), (S.TRAINING, S.CHECKED_IN),
    (S.CONNECTED, S.REPORTING),
])
def test_table_forbids_moves_that_skip_a_step(src: AgentState, dst: AgentState) -> None:
    assert dst not in TRANSITIONS[src]


def offline_agent(tmp_path: Path) -> DeviceAgent:
    raw = {"device": {"id": "dev-x", "fleet": "test", "state_dir": "state"},
           "broker": {"url": "mqtt://127.0.0.1:1"}, "data": {"train": "train.npz"}}
    key = load_or_create_signing_key(tmp_path / "k.key").public_key()
    data = LocalData(np.zeros((4, 64), np.float32), np.zeros(4, np.int32))
    return DeviceAgent(parse_device_config(raw, tmp_path), data, key, seed=0)


def test_agent_refuses_every_move_the_table_does_not_allow(tmp_path: Path) -> None:
    agent = offline_agent(tmp_path)
    for src in AgentState:
        for dst in AgentState:
            agent.state, agent.history = src, [src]
            if dst == src:
                agent._set(dst)  # staying put is a no-op
                assert agent.history == [src]
            elif dst in TRANSITIONS[src]:
                agent._set(dst)
                assert agent.state == dst and agent.history == [src, dst]
            else:
                with pytest.raises(RuntimeError, match=f"{src.value} -> {dst.value}"):
                    agent._set(dst)
                assert agent.state == src and agent.history == [src]


def assert_history_follows_table(history: list[AgentState]) -> None:
    for a, b in zip(history, history[1:], strict=False):
        assert b in TRANSITIONS[a], f"{a.value} -> {b.value} in {history}"


# --- device.toml --------------------------------------------------------------------------

BASE = {"device": {"id": "dev-1", "fleet": "test"}, "broker": {"url": "mqtt://127.0.0.1:1883"},
        "data": {"train": "train.npz"}}


def test_valid_device_config_resolves_relative_paths(tmp_path: Path) -> None:
    raw = {**BASE, "eligibility": {"require_charging": True, "min_battery": 0.3},
           "server": {"signing_public_key": "keys/server.pub"}}
    cfg = parse_device_config(raw, tmp_path)
    assert cfg.state_dir == tmp_path / "state" and cfg.data.train == tmp_path / "train.npz"
    assert cfg.server_signing_key_file == tmp_path / "keys/server.pub"
    assert cfg.broker.port == 1883 and not cfg.broker.tls
    assert cfg.eligibility.require_charging and cfg.eligibility.min_battery == 0.3
    toml = tmp_path / "device.toml"
    toml.write_text('[device]\nid = "dev-1"\nfleet = "test"\n[broker]\nurl = "mqtts://h"\n'
                    '[data]\ntrain = "/abs/train.npz"\n')
    loaded = load_device_config(toml)
    assert loaded.broker.tls and loaded.broker.port == 8883
    assert loaded.data.train == Path("/abs/train.npz")


def with_table(table: str, **values: Any) -> dict[str, Any]:
    return {**BASE, table: {**BASE.get(table, {}), **values}}


BAD_CONFIGS = [
    ("missing broker", {"device": BASE["device"], "data": BASE["data"]}, r"\[broker\]"),
    ("bad device id", with_table("device", id="dev 1"), "invalid device id"),
    ("missing fleet", {**BASE, "device": {"id": "dev-1"}}, "invalid fleet"),
    ("http broker url", with_table("broker", url="http://h:1"), "broker.url"),
    ("unknown eligibility key", {**BASE, "eligibility": {"solar": True}}, "unknown eligibility"),
    ("empty train path", with_table("data", train=""), "data.train"),
    ("device not a table", {**BASE, "device": 3}, "device"),
    ("data not a table", {**BASE, "data": "train.npz"}, "data"),
    ("eligibility not a table", {**BASE, "eligibility": 3}, "eligibility"),
    ("keepalive not a number", with_table("broker", keepalive_s="abc"), "keepalive_s"),
    ("broker port out of range", with_table("broker", url="mqtt://h:99999"), "port"),
    ("min_battery not a number", {**BASE, "eligibility": {"min_battery": "high"}}, "min_battery"),
    ("require_charging not a bool", {**BASE, "eligibility": {"require_charging": "yes"}},
     "require_charging"),
]


@pytest.mark.parametrize("raw, match", [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_bad_device_config_gives_config_error(tmp_path: Path, raw: dict[str, Any],
                                              match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg = parse_device_config(raw, tmp_path)
        cfg.broker.port  # noqa: B018  (a bad port must not surface only when first used)


def test_unreadable_device_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_device_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[device\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_device_config(tmp_path / "bad.toml")


# --- resuming an interrupted task (real server, Mosquitto, TFLite) ------------------------

FROZEN_DEVICE = """
import asyncio, sys
from pathlib import Path
from fedge.edge_client.agent import AgentHooks
from fedge.edge_client.config import load_device_config
from fedge.edge_client.device_main import build_agent

class Freeze(AgentHooks):
    async def after_compute(self, wall_s):
        Path(sys.argv[2]).write_text("trained")
        await asyncio.sleep(120)  # the test kills this process here, mid-task

async def main():
    config = load_device_config(Path(sys.argv[1]))
    agent = build_agent(config, hooks=Freeze(), checkin_timeout_s=10.0)
    await agent.run(asyncio.Event())

asyncio.run(main())
"""


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class AgentRun:
    """One DeviceAgent running in its own background loop until stopped."""

    def __init__(self, toml: Path, hooks: AgentHooks | None = None):
        self.loop = LoopThread("agent")
        self.agent: DeviceAgent = self.loop.call(
            lambda: build_agent(load_device_config(toml), hooks=hooks, checkin_timeout_s=10.0))

        async def new_event() -> asyncio.Event:
            return asyncio.Event()

        self.stop_event: asyncio.Event = self.loop.submit(new_event()).result()
        self.future = self.loop.submit(self.agent.run(self.stop_event))

    def stop(self, timeout_s: float) -> None:
        self.loop.loop.call_soon_threadsafe(self.stop_event.set)
        self.future.result(timeout=timeout_s)

    def close(self) -> None:
        self.loop.close()


class BlockAfterTraining(AgentHooks):
    """Holds the agent in TRAINING (after the interpreter ran) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = asyncio.Event()

    async def after_compute(self, wall_s: float) -> None:
        self.reached.set()
        await asyncio.wait_for(self.release.wait(), timeout=50)


@pytest.fixture
def one_device_job(tmp_path: Path, mlp_artifact: Path, digits: tuple[np.ndarray, ...],
                   mosquitto: MosquittoProcess) -> Iterator[tuple[ServerThread, Path, Path]]:
    """A server running a one-round job for one device, and that device's device.toml."""
    state = tmp_path / "server"
    load_or_create_signing_key(state / "signing.key")
    job = JobConfig(
        name="resume", fleet="test", artifact=mlp_artifact, rounds=1, seed=1,
        selection=SelectionConfig(target_reports=1, over_selection=1.0, min_reports=1,
                                  selection_timeout_s=10.0, round_deadline_s=45.0,
                                  retry_window_s=1.0),
        training=TrainingConfig(local_epochs=1, lr=0.1),
        evaluation=EvaluationConfig(central_every=0))
    device = tmp_path / "dev-000"
    device.mkdir()
    save_npz_dataset(device / "train.npz", digits[0][:400], digits[1][:400])
    toml = device / "device.toml"
    toml.write_text(f'[device]\nid = "dev-000"\nfleet = "test"\nstate_dir = "state"\n'
                    f'[broker]\nurl = "{mosquitto.url}"\n[data]\ntrain = "train.npz"\n'
                    f'[server]\nsigning_public_key = "{state / "signing.pub"}"\n')
    assert len(load_local_dataset(device / "train.npz")[1]) == 400
    server = start_server(job, ServerSettings(state_dir=state, broker_url=mosquitto.url,
                                              http_port=0))
    try:
        yield server, state, toml
    finally:
        try:
            server.stop()
        except Exception:
            server.loop.close()


def assert_resumed_and_accepted(server: ServerThread, state: Path, toml: Path) -> None:
    """A fresh agent on the same state dir resumes the pending task; round 1 commits with it."""
    pending = toml.parent / "state" / PENDING_TASK
    assert pending.exists()
    run = AgentRun(toml)
    try:
        assert server.wait(timeout_s=45) == "finished"
        wait_until(lambda: run.agent.rounds_reported == 1, 10, "the ack of the resumed update")
        history = list(run.agent.history)
    finally:
        run.stop(timeout_s=35)
        run.close()
    # resumed from the pending task file: trained straight after connecting, before any check-in
    assert history[:4] == [S.OFFLINE, S.CONNECTED, S.TRAINING, S.REPORTING]
    assert_history_follows_table(history)
    assert not pending.exists()
    store = SQLiteStore(state / "fedge.db")
    try:
        rounds = store.rounds("resume")
        participants = store.participants(rounds[0]["rid"])
    finally:
        store.close()
    assert [(r["round"], r["attempt"], r["state"], r["reported"]) for r in rounds] == [
        (1, 1, "committed", 1)]
    assert [(p["device_id"], p["status"]) for p in participants] == [("dev-000", "reported")]


def test_task_survives_a_device_crash_mid_training(tmp_path: Path, one_device_job: Any) -> None:
    server, state, toml = one_device_job
    marker = tmp_path / "trained.marker"
    script = tmp_path / "frozen_device.py"
    script.write_text(FROZEN_DEVICE)
    log = (tmp_path / "device.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(script), str(toml), str(marker)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, 40, "training to finish")
        assert proc.poll() is None, (tmp_path / "device.log").read_text()
        proc.send_signal(signal.SIGKILL)  # power loss while TRAINING
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert_resumed_and_accepted(server, state, toml)


def test_task_survives_stopping_the_agent_mid_training(one_device_job: Any) -> None:
    server, state, toml = one_device_job
    hooks = BlockAfterTraining()
    run = AgentRun(toml, hooks)
    try:
        assert hooks.reached.wait(timeout=40), "the device never trained"
        assert run.agent.state == S.TRAINING
        assert (toml.parent / "state" / PENDING_TASK).exists()
        run.loop.loop.call_soon_threadsafe(run.stop_event.set)
        run.loop.loop.call_soon_threadsafe(hooks.release.set)
        run.future.result(timeout=45)
        assert_history_follows_table(run.agent.history)
        assert run.agent.uplink_bytes == 0  # the interrupted task was never reported
    finally:
        run.close()
    assert (toml.parent / "state" / PENDING_TASK).exists(), (
        "stopping the agent mid-task deleted its pending task")
    assert_resumed_and_accepted(server, state, toml)
