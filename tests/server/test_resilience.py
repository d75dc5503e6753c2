"""Crashes and outages: server SIGKILL mid-round, Mosquitto restarted mid-job, rogue clients."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from fedge_testing import DeviceFleet, device_configs, free_tcp_port, iid_shards

from fedge.edge_client import codec
from fedge.edge_client.agent import AgentHooks
from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.data import save_npz_dataset
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import Envelope, unpack
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.server.store import SQLiteStore

REPO = Path(__file__).resolve().parents[2]


def write_job(
    tmp_path: Path,
    artifact: Path,
    digits: tuple,
    rounds: int,
    deadline: float = 20.0,
    target: int = 8,
    over_selection: float = 1.3,
) -> Path:
    central = tmp_path / "central.npz"
    save_npz_dataset(central, digits[2], digits[3])
    job = tmp_path / "job.toml"
    job.write_text(f"""
[job]
name = "digits"
fleet = "test"
artifact = "{artifact}"
rounds = {rounds}
seed = 3

[selection]
target_reports = {target}
over_selection = {over_selection}
min_reports = 5
selection_timeout_s = 10.0
round_deadline_s = {deadline}
retry_window_s = 1.0

[training]
local_epochs = 5
lr = 0.2

[evaluation]
central_every = 1
central_data = "{central}"
""")
    return job


def start_server_process(
    job: Path, broker_url: str, state: Path, log: Path
) -> subprocess.Popen[bytes]:
    port = free_tcp_port()
    with log.open("ab") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedge.tools.cli",
                "server",
                "--job",
                str(job),
                "--broker",
                broker_url,
                "--state-dir",
                str(state),
                "--http",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def rounds_of(state: Path) -> list[dict]:
    db = state / "fedge.db"
    if not db.exists():
        return []
    store = SQLiteStore(db)
    try:
        return store.rounds("digits")
    finally:
        store.close()


def job_status(state: Path) -> str | None:
    store = SQLiteStore(state / "fedge.db")
    try:
        row = store.job("digits")
        return row["status"] if row else None
    finally:
        store.close()


@pytest.fixture
def fleet_on(tmp_path, digits):
    fleets: list[DeviceFleet] = []

    def make(broker_url: str, key_pub: Path, n: int = 10) -> DeviceFleet:
        configs = device_configs(
            tmp_path / "devices", n, broker_url, key_pub, iid_shards(digits[0], digits[1], n)
        )
        fleet = DeviceFleet(configs, key_pub, checkin_timeout_s=8.0)
        fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def test_server_sigkill_mid_round_resumes_without_losing_committed_rounds(
    tmp_path, mlp_artifact, digits, mosquitto, fleet_on
):
    state = tmp_path / "state"
    key = state / "signing.key"
    load_or_create_signing_key(key)
    job = write_job(tmp_path, mlp_artifact, digits, rounds=5)
    log = tmp_path / "server.log"
    proc = start_server_process(job, mosquitto.url, state, log)
    fleet_on(mosquitto.url, key.with_suffix(".pub"))
    try:
        wait_for(
            lambda: sum(r["state"] == "committed" for r in rounds_of(state)) >= 2,
            120,
            "two committed rounds",
        )
        wait_for(
            lambda: any(
                r["round"] == 3 and r["state"] in ("collecting", "configuring", "selecting")
                for r in rounds_of(state)
            ),
            60,
            "round 3 in progress",
        )
        before = {
            r["round"]: r["weights_sha"] for r in rounds_of(state) if r["state"] == "committed"
        }
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start_server_process(job, mosquitto.url, state, log)
        wait_for(lambda: job_status(state) == "finished", 180, "the job to finish after restart")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = rounds_of(state)
    done = {r["round"]: r for r in rows if r["state"] == "committed"}
    assert sorted(done) == [1, 2, 3, 4, 5]
    for rnd, sha in before.items():  # nothing committed before the crash was lost or redone
        assert done[rnd]["weights_sha"] == sha
    killed = [r for r in rows if r["round"] == 3 and r["state"] == "failed"]
    assert killed and killed[0]["reason"] == "server restarted mid-round"
    assert done[5]["eval_accuracy"] >= 0.8


def test_devices_and_server_reconnect_after_mosquitto_restart(
    tmp_path, mlp_artifact, digits, mosquitto, fleet_on
):
    state = tmp_path / "state"
    key = state / "signing.key"
    load_or_create_signing_key(key)
    job = write_job(tmp_path, mlp_artifact, digits, rounds=4, deadline=20.0)
    proc = start_server_process(job, mosquitto.url, state, tmp_path / "server.log")
    fleet = fleet_on(mosquitto.url, key.with_suffix(".pub"))
    try:
        wait_for(
            lambda: sum(r["state"] == "committed" for r in rounds_of(state)) >= 1,
            120,
            "first committed round",
        )
        mosquitto.stop()
        time.sleep(1.0)
        mosquitto.start()
        wait_for(lambda: job_status(state) == "finished", 180, "the job to finish")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(r["round"] for r in rounds_of(state) if r["state"] == "committed") == [1, 2, 3, 4]
    assert all(a.link.stats.connects >= 2 for a in fleet.agents)  # every device reconnected


class Rogue:
    """A plain MQTT client that publishes whatever it likes on device topics."""

    def __init__(self, port: int):
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rogue")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.captured: list[tuple[str, bytes]] = []  # (device id, payload) of every device message
        self.client.on_message = lambda c, u, msg: self.captured.append(
            (topics.parse_device_topic(msg.topic)[1], msg.payload)
        )
        self.client.subscribe(topics.server_up_filter("test"), qos=1)

    def publish(self, device_id: str, payload: bytes) -> None:
        self.client.publish(topics.device_up("test", device_id), payload, qos=1).wait_for_publish(
            10
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SlowDevice(AgentHooks):
    """Takes 6 s longer to train: the window in which the rogue forges its update."""

    async def after_compute(self, wall_s: float) -> None:
        await asyncio.sleep(6.0)


def forged_update(real: Envelope, payload: bytes) -> bytes:
    update = m.parse(real)
    assert isinstance(update, m.Update)
    return m.make(
        m.Update(
            payload=payload,
            base_weights=update.base_weights,
            metrics=update.metrics,
        ),
        job_id=real.job_id,
        round_id=real.round_id,
    ).pack()


def is_update_of_round_2(device_id: str, data: bytes) -> bool:
    envelope = unpack(data, device_id, check_time=False)
    return envelope.type == "update" and envelope.round_id == 2


def test_rogue_messages_are_refused_and_logged(tmp_path, mlp_artifact, digits, mosquitto):
    state = tmp_path / "state"
    key = state / "signing.key"
    load_or_create_signing_key(key)
    job = write_job(
        tmp_path, mlp_artifact, digits, rounds=3, deadline=30.0, target=10, over_selection=1.0
    )
    proc = start_server_process(job, mosquitto.url, state, tmp_path / "server.log")
    rogue = Rogue(mosquitto.port)
    victim = "dev-009"  # trains slowly, so its real update comes after the forged ones
    configs = device_configs(
        tmp_path / "devices",
        10,
        mosquitto.url,
        key.with_suffix(".pub"),
        iid_shards(digits[0], digits[1], 10),
    )
    fleet = DeviceFleet(
        configs,
        key.with_suffix(".pub"),
        checkin_timeout_s=8.0,
        hooks=lambda i: SlowDevice() if i == 9 else AgentHooks(),
    )
    fleet.start()
    shapes = [tuple(t.shape) for t in load_artifact(mlp_artifact).manifest.tensors]
    try:
        wait_for(
            lambda: any(r["round"] == 2 and r["state"] == "collecting" for r in rounds_of(state)),
            120,
            "round 2 collecting",
        )
        wait_for(
            lambda: any(is_update_of_round_2(*c) for c in rogue.captured),
            60,
            "a real update of round 2 to replay",
        )
        sender, real_bytes = next(c for c in rogue.captured if is_update_of_round_2(*c))
        real = unpack(real_bytes, sender, check_time=False)
        spec = codec.parse_spec("none")  # the job's codec (write_job sets none)
        wrong_shape = codec.encode_update(
            [np.zeros((3, 3), np.float32)],
            spec,
            [(3, 3)],
            round_seed=0,
            rng=np.random.default_rng(0),
        )
        zeros = codec.encode_update(
            [np.zeros(s, np.float32) for s in shapes],
            spec,
            shapes,
            round_seed=0,
            rng=np.random.default_rng(0),
        )
        nan_values = zeros[:-4] + np.array([np.nan], np.float32).tobytes()
        rogue.publish(real.sender, b"\xc1garbage")  # malformed
        rogue.publish(real.sender, b"\x00" * (16 * 1024 * 1024 + 1))  # oversized
        rogue.publish(real.sender, real_bytes)  # replayed
        rogue.publish(victim, forged_update(real, wrong_shape))  # wrong shape
        rogue.publish(victim, forged_update(real, nan_values))  # NaN values
        nan_body = list(real.body)
        nan_body[m.UPDATE_FIELDS.index("metrics")] = np.array([np.nan, 0.5, 1.0], "<f2").tobytes()
        nan_metrics = Envelope(
            type="update",
            body=nan_body,
            job_id=real.job_id,
            round_id=real.round_id,
        ).pack()
        rogue.publish(victim, nan_metrics)  # NaN metrics
        wait_for(lambda: job_status(state) == "finished", 180, "the job to finish")
    finally:
        rogue.close()
        fleet.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(state / "fedge.db") as conn:  # the refusals as an operator reads them
        reasons = [row[0] for row in conn.execute("SELECT reason FROM rejections")]
    store = SQLiteStore(state / "fedge.db")
    round2 = [r for r in store.rounds("digits") if r["round"] == 2 and r["state"] == "committed"][0]
    victim_row = [p for p in store.participants(round2["rid"]) if p["device_id"] == victim][0]
    store.close()
    text = "\n".join(reasons)
    for expected in (
        "not a msgpack message",
        "exceeds the limit",
        "replayed",
        "'loss' is not finite",
        "NaN",
    ):
        assert expected in text, expected
    assert any("shape" in r.lower() or "crc" in r.lower() for r in reasons), reasons
    # The forged updates were refused without harm: the victim's own update still counted.
    assert victim_row["status"] == "reported"
    done = [r for r in rounds_of(state) if r["state"] == "committed"]
    assert [r["round"] for r in done] == [1, 2, 3]
    assert done[-1]["eval_accuracy"] >= 0.8
