"""The dashboard in headless Chromium, and the API, against a real server running a real job.

Set FEDGE_SAVE_SCREENSHOT=1 to also write the screenshot to docs/img/dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fedge_testing import DeviceFleet, ServerThread, device_configs, iid_shards, start_server

from fedge.edge_client.data import save_npz_dataset
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.edge_client.weights import unpack_weights
from fedge.server.app import ServerSettings
from fedge.server.job import EvaluationConfig, JobConfig, SelectionConfig, TrainingConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKENS = {"admin-token": "admin", "read-token": "read"}
ADMIN = {"Authorization": "Bearer admin-token"}
READ = {"Authorization": "Bearer read-token"}
PROFILES = ["pi4", "pi4", "pi-zero", "pi-zero", "android", "android"]
ROUNDS_BEFORE_PAUSE = 6
SELECTION_TIMEOUT_S = 5.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Live:
    """A real FedgeServer (embedded broker) with real device agents, paused after a few rounds."""

    srv: ServerThread
    fleet: DeviceFleet
    http: httpx.Client
    url: str


def wait_for(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def live(
    mlp_artifact: Path, digits: tuple[np.ndarray, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("dashboard")
    x_tr, y_tr, x_te, y_te = digits
    save_npz_dataset(root / "central.npz", x_te, y_te)
    job = JobConfig(  # checked when built
        name="dash",
        fleet="test",
        artifact=mlp_artifact,
        rounds=40,
        seed=1,
        selection=SelectionConfig(
            target_reports=4,
            over_selection=1.25,
            min_reports=3,
            selection_timeout_s=SELECTION_TIMEOUT_S,
            round_deadline_s=15.0,
            retry_window_s=0.5,
        ),
        training=TrainingConfig(local_epochs=2, lr=0.2),
        evaluation=EvaluationConfig(central_every=1, central_data=str(root / "central.npz")),
    )
    key_file = root / "server" / "signing.key"
    load_or_create_signing_key(key_file)
    srv = start_server(
        job, ServerSettings(state_dir=root / "server", http_port=0, api_tokens=TOKENS)
    )
    assert srv.server.broker is not None
    configs = device_configs(
        root / "devices",
        len(PROFILES),
        srv.server.broker.url,
        key_file.with_suffix(".pub"),
        iid_shards(x_tr, y_tr, len(PROFILES)),
    )
    fleet = DeviceFleet(
        [replace(c, profile=p) for c, p in zip(configs, PROFILES, strict=True)],
        key_file.with_suffix(".pub"),
    )
    fleet.start()
    url = f"http://127.0.0.1:{srv.server.http_port}"
    http = httpx.Client(base_url=url, timeout=30, headers=READ)
    try:

        def committed() -> bool:
            job_state = http.get("/v1/fleet").json()["job"]
            return bool(job_state and job_state["rounds_committed"] >= ROUNDS_BEFORE_PAUSE)

        wait_for(f"{ROUNDS_BEFORE_PAUSE} committed rounds", committed, 180)

        def all_online() -> bool:
            """Every agent registered and online (one may still be reconnecting on a loaded CI)."""
            profiles = http.get("/v1/fleet").json()["by_profile"].values()
            return sum(p["online"] for p in profiles) == len(PROFILES)

        wait_for(f"all {len(PROFILES)} devices online", all_online, 120)
        assert http.post("/v1/jobs/dash/pause", headers=ADMIN).json()["status"] == "paused"

        def parked() -> bool:
            """The round in flight closed, or is selecting past its timeout: paused devices are
            not admitted, so it stays there until the job resumes or stops."""
            cur = http.get("/v1/fleet").json()["job"]["current_round"]
            return (
                cur is None
                or cur["state"] in ("committed", "failed")
                or (
                    cur["state"] == "selecting"
                    and time.time() - cur["started"] > SELECTION_TIMEOUT_S + 1.5
                )
            )

        wait_for("the round in flight to close", parked, 60)
        yield Live(srv, fleet, http, url)
    finally:
        coordinator = srv.server.coordinator
        if coordinator is not None and not coordinator.runtime.finished.is_set():
            http.post("/v1/jobs/dash/stop", headers=ADMIN)
        try:
            srv.future.result(timeout=60)
        finally:
            # Agents told to retry in 60 s while the job was paused do not watch their stop
            # event during that wait (edge_client.agent._wait_for_retry): cancel them instead.
            for agent_run in fleet._futures:
                agent_run.cancel()
            fleet.stop()
            srv.loop.close()
            http.close()


class Attributes(HTMLParser):
    """Attributes of every element that has an id, from Chromium's --dump-dom output."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self._open: str | None = None
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if a.get("id"):
            self.by_id[str(a["id"])] = a
            self._open = str(a["id"])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.text[self._open] = self.text.get(self._open, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def chromium(tmp: Path, *args: str) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def dom(tmp: Path, url: str) -> Attributes:
    parser = Attributes()
    parser.feed(chromium(tmp, "--dump-dom", url))
    return parser


def test_dashboard_draws_the_job_from_the_store(live: Live, tmp_path: Path) -> None:
    rounds = live.http.get("/v1/jobs/dash/rounds?kind=train").json()["items"]
    committed = [r for r in rounds if r["state"] == "committed"]
    assert len(committed) >= ROUNDS_BEFORE_PAUSE
    page = dom(tmp_path, f"{live.url}/dashboard?token=read-token")
    assert page.body.get("data-ready") == "1"
    rendered = {
        k: int(str(v.get("data-rendered"))) for k, v in page.by_id.items() if "data-rendered" in v
    }
    assert rendered == {
        "chart-quality": len(committed),
        "chart-participation": len(rounds),
        "chart-bytes": len(rounds),
        "chart-profiles": 3,
        "chart-status": 4,
    }
    assert page.text["job-name"] == "dash" and page.text["job-status"] == "paused"
    assert page.text["t-rounds"] == f"{len(committed)} / 40"
    assert page.text["t-online"] == "6 / 6"
    assert "hidden" in page.by_id["login"]


def test_dashboard_without_token_asks_for_one(live: Live, tmp_path: Path) -> None:
    page = dom(tmp_path, f"{live.url}/")
    assert "hidden" not in page.by_id["login"]
    assert all(v.get("data-rendered") == "0" for v in page.by_id.values() if "data-rendered" in v)


def test_dashboard_screenshot(live: Live, tmp_path: Path) -> None:
    png = tmp_path / "dashboard.png"
    chromium(tmp_path, f"--screenshot={png}", f"{live.url}/?token=read-token")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("FEDGE_SAVE_SCREENSHOT"):
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(png, REPO / "docs" / "img" / "dashboard.png")


def test_real_job_through_the_api(live: Live) -> None:
    """The real server's rounds, devices, metrics and weights agree with each other."""
    c = live.srv.server.coordinator
    assert c is not None and c.runtime.paused
    fleet = live.http.get("/v1/fleet").json()
    assert fleet["by_profile"] == {
        "android": {"total": 2, "online": 2},
        "pi-zero": {"total": 2, "online": 2},
        "pi4": {"total": 2, "online": 2},
    }
    rounds = live.http.get("/v1/jobs/dash/rounds?state=committed").json()["items"]
    last = rounds[-1]
    assert last["eval_accuracy"] is not None and last["reported"] >= 3 and last["uplink_bytes"] > 0
    detail = live.http.get(f"/v1/jobs/dash/rounds/{last['rid']}").json()
    reported = [p for p in detail["participants"] if p["status"] == "reported"]
    assert len(reported) == last["reported"]
    assert sum(p["uplink_bytes"] for p in reported) == last["uplink_bytes"]
    weights = unpack_weights(
        live.http.get("/v1/jobs/dash/weights").content, [w.shape for w in c.checkpoints.weights]
    )
    for got, want in zip(weights, c.checkpoints.weights, strict=True):
        np.testing.assert_array_equal(got, want)
    metrics = live.http.get("/metrics").text
    assert (
        f'fedge_committed_rounds{{job="dash"}} {float(fleet["job"]["rounds_committed"])}' in metrics
    )
    assert 'fedge_devices_connected{profile="pi4"} 2.0' in metrics


def test_stop_through_the_api_ends_the_paused_job(live: Live) -> None:
    resp = live.http.post("/v1/jobs/dash/stop", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["status"] == "stopped"
    assert live.srv.future.result(timeout=60) == "stopped"
