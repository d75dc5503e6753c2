"""Management API over real HTTP: a real Store and a stand-in ServerControl behind uvicorn."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.trainer import LocalTrainer
from fedge.edge_client.weights import pack_weights, unpack_weights
from fedge.server.blobs import BlobStore
from fedge.server.broker import free_port
from fedge.server.control import (
    ActiveJob,
    JobConflict,
    JobNotFound,
    LiveRound,
    ModelSnapshot,
    Traffic,
)
from fedge.server.job import JobConfig, parse_job_config
from fedge.server.store import SQLiteStore, Store
from fedge.server.web.api import mount_api
from fedge.server.web.http_app import TrafficCounter, create_app

TOKENS = {"admin-token": "admin", "read-token": "read"}
ADMIN = {"Authorization": "Bearer admin-token"}
READ = {"Authorization": "Bearer read-token"}
PROFILES = ["pi4"] * 5 + ["pi-zero"] * 4 + ["android"] * 3


def job_toml(name: str, artifact: Path, rounds: int = 10) -> str:
    return (
        f'[job]\nname = "{name}"\nfleet = "test"\nartifact = "{artifact}"\nrounds = {rounds}\n'
        "[selection]\ntarget_reports = 4\nmin_reports = 2\n"
    )


def make_job(name: str, artifact: Path, rounds: int = 10) -> JobConfig:
    import tomllib

    return parse_job_config(tomllib.loads(job_toml(name, artifact, rounds)), artifact)


@dataclass
class StandInControl:
    """A `ServerControl` over a real store and blob store: what the web layer sees of a server.

    The round in progress is a snapshot the test sets (``live``); ``running`` is set unless the
    job is paused and ``finished`` once it ended, as the job loop keeps them.
    """

    store: SQLiteStore
    blobs: BlobStore
    http: TrafficCounter = field(default_factory=TrafficCounter)
    mqtt: tuple[int, int, int] | None = None  # bytes sent, bytes received, connects
    job: JobConfig | None = None
    live: LiveRound | None = None
    running: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    submitted: list[JobConfig] = field(default_factory=list)

    def start(self, job: JobConfig) -> None:
        """Run ``job`` from its stored row (created if new), between rounds."""
        load_artifact(job.artifact)  # as the server does: a job whose model is unusable fails
        if self.store.job(job.name) is None:
            self.store.create_job(job.name, job.to_dict())
        self.job, self.live = job, None
        self.running.set()
        self.finished.clear()

    def active_job(self) -> ActiveJob | None:
        if self.job is None:
            return None
        row = self.store.job(self.job.name)
        status = "running" if self.running.is_set() else "paused"
        if self.finished.is_set() and row is not None:
            status = row["status"]
        return ActiveJob(name=self.job.name, status=status, rounds_total=self.job.rounds)

    def live_round(self) -> LiveRound | None:
        return self.live  # kept after the job ends, as the job loop keeps its last round

    def traffic(self) -> Traffic:
        sent, received, connects = self.mqtt or (None, None, None)
        return Traffic(self.http.bytes_served, sent, received, connects)

    async def submit(self, job: JobConfig) -> None:
        if self.job is not None and not self.finished.is_set():
            raise JobConflict(f"job {self.job.name!r} is still running")
        self.start(job)
        self.submitted.append(job)

    def _active(self, job_id: str) -> None:
        if self.job is None or self.job.name != job_id or self.finished.is_set():
            raise JobConflict(f"job {job_id!r} is not the active job")

    def pause(self, job_id: str) -> None:
        self._active(job_id)
        self.running.clear()

    def resume(self, job_id: str) -> None:
        self._active(job_id)
        self.running.set()

    def stop(self, job_id: str) -> None:
        self._active(job_id)
        self.store.set_job_status(job_id, "stopped", "stopped by operator through the API")
        self.finished.set()
        self.running.set()  # a paused job must wake up to see that it was stopped

    def model(self, job_id: str, round_number: int | None) -> ModelSnapshot:
        row = self.store.job(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        artifact = load_artifact(Path(row["config"]["artifact"]))
        sha, number = row["weights_sha"], row["committed_round"]
        if round_number is not None:
            sha, number = self.store.checkpoint_weights(job_id, round_number), round_number
            if sha is None:
                raise JobNotFound(f"job {job_id!r} has no checkpoint for round {number}")
        if sha is None:  # nothing committed yet: the artifact's own initial weights
            weights = LocalTrainer(artifact).get_weights()
            return ModelSnapshot(artifact, weights, f"job {job_id} before its first round")
        if not self.blobs.has(sha):
            raise JobNotFound(f"weights {sha} of job {job_id!r} are not in the blob store")
        weights = unpack_weights(self.blobs.get(sha), [t.shape for t in artifact.manifest.tensors])
        return ModelSnapshot(artifact, weights, f"job {job_id} after round {number}")


class Served:
    """uvicorn serving an app on a free loopback port in a thread."""

    def __init__(self, app: Any):
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Env:
    """A filled store, the stand-in control and an HTTP client to the running app."""

    control: StandInControl
    http: httpx.Client
    weights: dict[int, list[np.ndarray]]
    rids: dict[str, int]
    artifact: Path


def perturbed(base: list[np.ndarray], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(w + rng.normal(scale=0.05, size=w.shape)).astype(np.float32) for w in base]


def walk(store: Store, rid: int, *states: str) -> None:
    """Move a round along ``states`` (the store refuses transitions the table does not allow)."""
    for state in states:
        store.transition(rid, state)


def fill_store(
    store: Store, blobs: BlobStore, artifact: Path
) -> tuple[dict[int, list[np.ndarray]], dict[str, int]]:
    """Two jobs with committed, failed and evaluation rounds, 12 devices, 3 rejections."""
    base = LocalTrainer(load_artifact(artifact)).get_weights()
    for i, profile in enumerate(PROFILES):
        store.upsert_device(
            f"dev-{i:02d}",
            "test",
            online=i % 2 == 0,
            profile=profile,
            runtime="tflite-runtime 2.14.0",
            eligibility={"charging": True},
            identity_key=bytes([i]) * 32,
        )
    rids: dict[str, int] = {}
    store.create_job("old", make_job("old", artifact).to_dict())
    rid = store.start_round("old", 1, 1, "train", "selecting")
    walk(store, rid, "configuring", "collecting", "aggregating")
    old_weights = perturbed(base, 99)
    store.commit_round(rid, "old", 1, blobs.put(pack_weights(old_weights)), None, reported=2)
    store.set_job_status("old", "finished")
    time.sleep(0.01)  # "digits" is created later, so it lists first

    store.create_job("digits", make_job("digits", artifact).to_dict())
    weights: dict[int, list[np.ndarray]] = {}
    plan = [
        (1, 1, "committed", range(0, 5)),
        (2, 1, "failed", range(5, 7)),
        (2, 2, "committed", range(7, 12)),
        (3, 1, "committed", range(0, 5)),
    ]
    for number, attempt, final, members in plan:
        devices = [f"dev-{i:02d}" for i in members]
        rid = store.start_round("digits", number, attempt, "train", "selecting")
        rids[f"{number}.{attempt}"] = rid
        store.set_participants(rid, devices)
        store.transition(rid, "configuring", selected=len(devices))
        store.transition(rid, "collecting")
        reported = devices[:-1] if final == "committed" else devices[:1]
        for j, d in enumerate(reported):
            store.set_participant(
                rid,
                d,
                "reported",
                examples=40 + j,
                loss=1.0 / number,
                accuracy=0.5 + 0.1 * number,
                train_time_s=0.2,
                uplink_bytes=1000,
            )
        for d in devices[len(reported) :]:
            store.set_participant(rid, d, "dropped", reason="no report by deadline")
        counts: dict[str, Any] = dict(
            reported=len(reported),
            dropped=len(devices) - len(reported),
            refused=0,
            uplink_bytes=1000 * len(reported),
            downlink_bytes=5000 * len(devices),
        )
        if final == "failed":
            store.transition(rid, "failed", reason="only 1 of the minimum 2 reported", **counts)
            continue
        store.transition(rid, "aggregating", **counts)
        weights[number] = perturbed(base, number)
        store.commit_round(
            rid,
            "digits",
            number,
            blobs.put(pack_weights(weights[number])),
            None,
            train_loss=1.0 / number,
            train_accuracy=0.5 + 0.1 * number,
            eval_loss=1.2 / number,
            eval_accuracy=0.45 + 0.1 * number,
            aggregation_s=0.01 * number,
            slowest_train_s=0.2,
        )
    rid = store.start_round("digits", 3, 1, "evaluate", "selecting")
    rids["eval3"] = rid
    walk(store, rid, "configuring", "collecting", "aggregating")
    store.transition(rid, "committed", reported=3, fed_eval_loss=0.5, fed_eval_accuracy=0.8)
    store.record_rejection("dev-05", "fedge/test/dev/dev-05/up", "bad signature")
    store.record_rejection("dev-05", "fedge/test/dev/dev-05/up", "replayed message")
    store.record_rejection(None, "fedge/test/dev/x/up", "not msgpack")
    weights[-1] = old_weights
    return weights, rids


def start_live_round(control: StandInControl, rids: dict[str, int]) -> None:
    """Round 4 collecting: dev-00, dev-02, dev-08 selected, dev-00 reported."""
    store = control.store
    rid = store.start_round("digits", 4, 1, "train", "selecting")
    rids["4.1"] = rid
    selected = ["dev-00", "dev-02", "dev-08"]
    store.set_participants(rid, selected)
    store.transition(rid, "configuring", selected=3)
    store.transition(rid, "collecting")
    store.set_participant(
        rid, "dev-00", "reported", examples=40, loss=0.3, accuracy=0.9, uplink_bytes=1234
    )
    now = time.time()
    control.live = LiveRound(
        rid=rid,
        job_id="digits",
        number=4,
        kind="train",
        attempt=1,
        state="collecting",
        selected=frozenset(selected),
        reported=frozenset({"dev-00"}),
        refused=0,
        uplink_bytes=1234,
        downlink_bytes=0,
        started=now,
        deadline=now + 60,
    )


def build_env(
    root: Path, artifact: Path, tokens: dict[str, str], host: str = "127.0.0.1"
) -> tuple[Env, Served]:
    state = root / "state"
    store = SQLiteStore(state / "fedge.db")
    blobs = BlobStore(state / "blobs")
    weights, rids = fill_store(store, blobs, artifact)
    control = StandInControl(store, blobs)
    control.start(make_job("digits", artifact))
    assert store.job("digits")["committed_round"] == 3  # type: ignore[index]  # resumes there
    start_live_round(control, rids)
    control.mqtt = (4321, 0, 2)
    control.http.bytes_served = 777
    app = create_app(blobs, control.http)
    mount_api(app.api, store, control, state_dir=state, http_host=host, api_tokens=tokens)
    served = Served(app)
    return Env(
        control, httpx.Client(base_url=served.url, timeout=30), weights, rids, artifact
    ), served


@pytest.fixture(scope="module")
def env(mlp_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Read-only tests share one server."""
    e, served = build_env(tmp_path_factory.mktemp("api"), mlp_artifact, TOKENS)
    yield e
    e.http.close()
    served.close()
    e.control.store.close()


@pytest.fixture
def fresh(mlp_artifact: Path, tmp_path: Path) -> Iterator[Env]:
    """Tests that change state get their own server."""
    e, served = build_env(tmp_path, mlp_artifact, TOKENS)
    yield e
    e.http.close()
    served.close()
    e.control.store.close()


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


GET_ROUTES = [
    "/v1/fleet",
    "/v1/devices",
    "/v1/devices/dev-00",
    "/v1/jobs",
    "/v1/jobs/digits",
    "/v1/jobs/digits/rounds",
    "/v1/jobs/digits/rounds/2",
    "/v1/jobs/digits/model",
    "/v1/jobs/digits/model.tflite",
    "/v1/jobs/digits/weights",
    "/metrics",
]
ADMIN_ROUTES = [
    "/v1/jobs",
    "/v1/jobs/digits/pause",
    "/v1/jobs/digits/resume",
    "/v1/jobs/digits/stop",
]


# auth -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"), [("GET", p) for p in GET_ROUTES] + [("POST", p) for p in ADMIN_ROUTES]
)
def test_missing_or_bad_token_is_401_with_challenge(env: Env, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YTpi"}):
        resp = env.http.request(method, path, headers=headers)
        assert "missing" in error_of(resp, 401) or "invalid" in resp.json()["error"]
        assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ADMIN_ROUTES)
def test_read_token_on_admin_route_is_403(env: Env, path: str) -> None:
    resp = env.http.post(path, headers=READ, content=b"[job]")
    assert "admin" in error_of(resp, 403)
    assert env.control.job is not None and env.control.running.is_set()


def test_read_token_reads_every_get_route(env: Env) -> None:
    for path in GET_ROUTES:
        assert env.http.get(path, headers=READ).status_code == 200, path


def test_blobs_health_and_dashboard_need_no_token(env: Env) -> None:
    row, weights = env.control.store.job("digits"), env.weights[3]  # the job's latest weights
    assert row is not None
    resp = env.http.get(f"/v1/blobs/{row['weights_sha']}")
    assert resp.status_code == 200
    assert unpack_weights(resp.content, [w.shape for w in weights])[0].shape == weights[0].shape
    assert env.http.get("/healthz").json() == {"status": "ok"}
    for path in ("/", "/dashboard"):
        page = env.http.get(path)
        assert page.status_code == 200 and "/static/dashboard.js" in page.text
    for name in ("dashboard.js", "charts.js", "dashboard.css"):
        assert env.http.get(f"/static/{name}").status_code == 200
    assert env.http.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/rounds/{rid}"]


def test_no_tokens_open_on_loopback_closed_elsewhere(mlp_artifact: Path, tmp_path: Path) -> None:
    for host, status in (("127.0.0.1", 200), ("0.0.0.0", 403)):
        e, served = build_env(tmp_path / host, mlp_artifact, {}, host=host)
        try:
            assert e.http.get("/v1/fleet").status_code == status
            assert e.http.get("/metrics").status_code == status
            assert e.http.post("/v1/jobs/digits/pause").status_code == status
            if status == 403:
                assert "no API tokens" in error_of(e.http.get("/v1/jobs"), 403)
            assert e.http.get("/healthz").status_code == 200
        finally:
            e.http.close()
            served.close()
            e.control.store.close()


# fleet and devices ---------------------------------------------------------------------------
def test_fleet_overview(env: Env) -> None:
    body = env.http.get("/v1/fleet", headers=READ).json()
    assert body["devices_total"] == 12 and body["devices_online"] == 6
    assert body["by_profile"] == {
        "pi4": {"total": 5, "online": 3},
        "pi-zero": {"total": 4, "online": 2},
        "android": {"total": 3, "online": 1},
    }
    # dev-00 reported, dev-02 and dev-08 selected (all online), 3 other online idle, 6 offline
    assert body["by_status"] == {"offline": 6, "idle": 3, "selected": 2, "reported": 1}
    job = body["job"]
    assert (job["id"], job["status"], job["rounds_total"], job["rounds_committed"]) == (
        "digits",
        "running",
        10,
        3,
    )
    assert job["current_round"]["number"] == 4 and job["current_round"]["state"] == "collecting"
    assert (job["current_round"]["selected"], job["current_round"]["reported"]) == (3, 1)


def test_devices_filters_and_pagination(env: Env) -> None:
    get = lambda q: env.http.get(f"/v1/devices{q}", headers=READ).json()  # noqa: E731
    everything = get("?limit=1000")
    assert everything["total"] == 12 and [d["id"] for d in everything["items"]] == sorted(
        f"dev-{i:02d}" for i in range(12)
    )
    online = get("?online=true")
    assert online["total"] == 6 and all(d["online"] for d in online["items"])
    assert get("?online=false")["total"] == 6
    pi4_on = get("?profile=pi4&online=true")
    assert [d["id"] for d in pi4_on["items"]] == ["dev-00", "dev-02", "dev-04"]
    assert get("?profile=nokia")["items"] == []
    page = get("?limit=5&offset=10")
    assert (page["total"], page["limit"], page["offset"]) == (12, 5, 10)
    assert [d["id"] for d in page["items"]] == ["dev-10", "dev-11"]
    first = get("?limit=1")["items"][0]
    assert first["identity_key"] == "00" * 32 and first["eligibility"] == {"charging": True}
    assert first["status"] == "reported" and first["rounds_reported"] == 3


@pytest.mark.parametrize("query", ["?limit=0", "?limit=1001", "?offset=-1", "?online=maybe"])
def test_bad_query_is_422_json(env: Env, query: str) -> None:
    error_of(env.http.get(f"/v1/devices{query}", headers=READ), 422)


def test_device_detail_history(env: Env) -> None:
    body = env.http.get("/v1/devices/dev-04", headers=READ).json()
    # dev-04: dropped from round 1, reported in round 3 (newest first)
    hist = [(h["job_id"], h["round"], h["attempt"], h["status"]) for h in body["history"]]
    assert hist == [("digits", 3, 1, "dropped"), ("digits", 1, 1, "dropped")]
    assert body["rounds_dropped"] == 2 and body["status"] == "idle"
    zero = env.http.get("/v1/devices/dev-00?history=1", headers=READ).json()
    assert [(h["round"], h["status"], h["round_state"]) for h in zero["history"]] == [
        (4, "reported", "collecting")
    ]
    assert "dev-99" in error_of(env.http.get("/v1/devices/dev-99", headers=READ), 404)


# jobs and rounds -----------------------------------------------------------------------------
def test_jobs_list_and_detail(env: Env) -> None:
    jobs = env.http.get("/v1/jobs", headers=READ).json()
    assert [(j["id"], j["status"], j["active"]) for j in jobs["items"]] == [
        ("digits", "running", True),
        ("old", "finished", False),
    ]
    assert env.http.get("/v1/jobs?limit=1&offset=1", headers=READ).json()["items"][0]["id"] == "old"
    detail = env.http.get("/v1/jobs/digits", headers=READ).json()
    assert detail["committed_round"] == 3 and detail["rounds_total"] == 10
    assert detail["rounds_by_state"] == {"committed": 4, "failed": 1, "collecting": 1}
    assert detail["config"]["selection"]["target_reports"] == 4
    assert detail["last_round"]["round"] == 4 and detail["last_round"]["reported"] == 1
    assert "nope" in error_of(env.http.get("/v1/jobs/nope", headers=READ), 404)
    for sub in ("rounds", "rounds/1", "model", "weights", "model.tflite"):
        error_of(env.http.get(f"/v1/jobs/nope/{sub}", headers=READ), 404)


def test_rounds_filters_and_pagination(env: Env) -> None:
    get = lambda q: env.http.get(f"/v1/jobs/digits/rounds{q}", headers=READ).json()  # noqa: E731
    every = get("")
    assert every["total"] == 6
    assert [(r["round"], r["attempt"], r["kind"], r["state"]) for r in every["items"]] == [
        (1, 1, "train", "committed"),
        (2, 1, "train", "failed"),
        (2, 2, "train", "committed"),
        (3, 1, "train", "committed"),
        (3, 1, "evaluate", "committed"),
        (4, 1, "train", "collecting"),
    ]
    assert get("?kind=evaluate")["items"][0]["fed_eval_accuracy"] == 0.8
    assert [r["round"] for r in get("?state=committed&kind=train")["items"]] == [1, 2, 3]
    assert [r["attempt"] for r in get("?limit=2&offset=1")["items"]] == [1, 2]
    live = every["items"][-1]
    assert (live["selected"], live["reported"], live["uplink_bytes"], live["ended"]) == (
        3,
        1,
        1234,
        None,
    )
    assert every["items"][0]["dropped"] == 1 and every["items"][0]["duration_s"] >= 0
    error_of(env.http.get("/v1/jobs/digits/rounds?limit=0", headers=READ), 422)


def test_round_detail(env: Env) -> None:
    rid = env.rids["1.1"]
    body = env.http.get(f"/v1/jobs/digits/rounds/{rid}", headers=READ).json()
    assert [p["device_id"] for p in body["participants"]] == [f"dev-{i:02d}" for i in range(5)]
    assert body["dropouts"] == ["dev-04"]
    assert [t["state"] for t in body["timings"]] == [
        "selecting",
        "configuring",
        "collecting",
        "aggregating",
        "committed",
    ]
    assert all(t["seconds"] is not None and t["seconds"] >= 0 for t in body["timings"])
    assert (body["uplink_bytes"], body["downlink_bytes"]) == (4000, 25000)
    failed = env.http.get(f"/v1/jobs/digits/rounds/{env.rids['2.1']}", headers=READ).json()
    assert failed["state"] == "failed" and failed["reason"].startswith("only 1")
    live = env.http.get(f"/v1/jobs/digits/rounds/{env.rids['4.1']}", headers=READ).json()
    assert live["timings"][-1]["state"] == "collecting" and live["timings"][-1]["seconds"] is None
    old_rid = env.http.get("/v1/jobs/old/rounds", headers=READ).json()["items"][0]["rid"]
    error_of(env.http.get(f"/v1/jobs/digits/rounds/{old_rid}", headers=READ), 404)
    error_of(env.http.get("/v1/jobs/digits/rounds/abc", headers=READ), 422)


# model files ---------------------------------------------------------------------------------
def test_weights_msgpack_and_npz(env: Env) -> None:
    shapes = [w.shape for w in env.weights[3]]
    resp = env.http.get("/v1/jobs/digits/weights", headers=READ)
    assert resp.headers["content-disposition"].startswith("attachment")
    for got, want in zip(unpack_weights(resp.content, shapes), env.weights[3], strict=True):
        np.testing.assert_array_equal(got, want)
    npz = np.load(
        io.BytesIO(env.http.get("/v1/jobs/digits/weights?format=npz&round=1", headers=READ).content)
    )
    names = [t.name for t in load_artifact(env.artifact).manifest.tensors]
    assert list(npz.files) == names
    for name, want in zip(names, env.weights[1], strict=True):
        np.testing.assert_array_equal(npz[name], want)
    old = env.http.get("/v1/jobs/old/weights", headers=READ).content
    np.testing.assert_array_equal(unpack_weights(old, shapes)[0], env.weights[-1][0])
    second = env.http.get("/v1/jobs/digits/weights?round=2", headers=READ).content
    np.testing.assert_array_equal(unpack_weights(second, shapes)[1], env.weights[2][1])
    error_of(env.http.get("/v1/jobs/digits/weights?round=7", headers=READ), 404)
    error_of(env.http.get("/v1/jobs/digits/weights?format=pickle", headers=READ), 422)


def test_model_tflite_has_the_weights_baked_in(env: Env) -> None:
    """Load the served model alone; it must predict like the artifact with set_weights."""
    from fedge.edge_client.artifact import Artifact
    from fedge.server.model_files import baked_manifest

    original = load_artifact(env.artifact)
    for query, weights in (("", env.weights[3]), ("?round=1", env.weights[1])):
        data = env.http.get(f"/v1/jobs/digits/model.tflite{query}", headers=READ).content
        baked = LocalTrainer(
            Artifact.from_bytes(baked_manifest(original.manifest, data).to_json(), data)
        )
        for got, want in zip(baked.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(got, want)
        reference = LocalTrainer(original)
        reference.set_weights(weights)
        x = (
            np.random.default_rng(0)
            .normal(size=(50, *original.manifest.input_shape))
            .astype(np.float32)
        )
        np.testing.assert_allclose(baked.predict(x), reference.predict(x), rtol=1e-6, atol=1e-6)
        assert not np.allclose(LocalTrainer(original).predict(x), reference.predict(x))


def test_model_zip_is_an_artifact_starting_at_the_weights(env: Env, tmp_path: Path) -> None:
    resp = env.http.get("/v1/jobs/old/model", headers=READ)
    assert resp.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        assert sorted(zf.namelist()) == [
            "README.txt",
            "manifest.json",
            "model.tflite",
            "weights.msgpack",
        ]
        zf.extractall(tmp_path)
    assert "after round 1" in (tmp_path / "README.txt").read_text()
    art = load_artifact(tmp_path)  # sha256 in the manifest matches the baked model
    for got, want, packed in zip(
        LocalTrainer(art).get_weights(),
        env.weights[-1],
        unpack_weights(
            (tmp_path / "weights.msgpack").read_bytes(), [w.shape for w in env.weights[-1]]
        ),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(packed, want)


def test_bake_refuses_bad_input(env: Env) -> None:
    from fedge.edge_client.errors import ArtifactError
    from fedge.server.model_files import bake_weights

    art = load_artifact(env.artifact)
    w = env.weights[3]
    for model, weights, needle in (
        (art.model_bytes, w[:1], "expected 4 weight tensors"),
        (art.model_bytes, [w[1], w[0], *w[2:]], "has shape"),
        (art.model_bytes[:5000], w, "truncated or corrupt"),
    ):
        with pytest.raises(ArtifactError, match=needle):
            bake_weights(model, art.manifest, weights)


def test_unknown_token_role_is_a_config_error(env: Env) -> None:
    from fedge.edge_client.errors import ConfigError

    app = create_app(env.control.blobs, env.control.http)
    with pytest.raises(ConfigError, match="root"):
        mount_api(
            app.api,
            env.control.store,
            env.control,
            state_dir=env.control.store.path.parent,
            http_host="127.0.0.1",
            api_tokens={"secret": "root"},
        )


# metrics -------------------------------------------------------------------------------------
def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = http.get("/metrics", headers=READ)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }


def test_metrics_read_from_the_store(env: Env) -> None:
    m = scrape(env.http)
    train = (("job", "digits"), ("kind", "train"))
    assert m[("fedge_rounds", (*train, ("state", "committed")))] == 3
    assert m[("fedge_rounds", (*train, ("state", "failed")))] == 1
    # stored reports 4 + 1 + 4 plus the live round's 1
    assert m[("fedge_reports_total", train)] == 4 + 1 + 4 + 4 + 1
    assert m[("fedge_dropouts_total", train)] == 1 + 1 + 1 + 1
    assert m[("fedge_uplink_bytes_total", train)] == 4000 + 1000 + 4000 + 4000 + 1234
    assert m[("fedge_refused_messages_total", ())] == 3
    assert m[("fedge_round_duration_seconds_count", train)] == 3
    assert m[("fedge_round_duration_seconds_bucket", (*train, ("le", "+Inf")))] == 3
    assert m[("fedge_aggregation_seconds_sum", (("job", "digits"),))] == pytest.approx(0.06)
    assert m[("fedge_devices_connected", (("profile", "pi4"),))] == 3
    assert m[("fedge_devices_known", (("profile", "android"),))] == 3
    assert (
        m[("fedge_current_round", (("job", "digits"), ("kind", "train"), ("state", "collecting")))]
        == 4
    )
    assert m[("fedge_committed_rounds", (("job", "digits"),))] == 3
    assert m[("fedge_eval_accuracy", (("job", "digits"),))] == pytest.approx(0.75)
    assert m[("fedge_job_info", (("job", "old"), ("status", "finished")))] == 1
    assert m[("fedge_mqtt_bytes_sent_total", ())] == 4321
    assert m[("fedge_http_bytes_served_total", ())] >= 777


def test_metrics_survive_a_restart(env: Env) -> None:
    """A new app over the reopened database reports the same stored totals."""
    from prometheus_client import generate_latest

    from fedge.server.web.metrics import metrics_registry

    before = scrape(env.http)
    reopened = SQLiteStore(env.control.store.path)
    try:
        text = generate_latest(
            metrics_registry(reopened, StandInControl(reopened, env.control.blobs))
        ).decode()
    finally:
        reopened.close()
    after = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    for key in (
        ("fedge_rounds", (("job", "digits"), ("kind", "train"), ("state", "committed"))),
        ("fedge_round_duration_seconds_sum", (("job", "digits"), ("kind", "train"))),
        ("fedge_refused_messages_total", ()),
        ("fedge_devices_known", (("profile", "pi4"),)),
    ):
        assert after[key] == before[key]
    train = (("job", "digits"), ("kind", "train"))
    assert after[("fedge_reports_total", train)] == before[("fedge_reports_total", train)] - 1


# job control ---------------------------------------------------------------------------------
def test_pause_resume_stop_and_create(fresh: Env) -> None:
    c = fresh.control
    paused = fresh.http.post("/v1/jobs/digits/pause", headers=ADMIN)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert not c.running.is_set()
    assert fresh.http.get("/v1/fleet", headers=READ).json()["job"]["status"] == "paused"
    assert fresh.http.post("/v1/jobs/digits/resume", headers=ADMIN).json()["status"] == "running"
    assert c.running.is_set()
    fresh.http.post("/v1/jobs/digits/pause", headers=ADMIN)
    busy = fresh.http.post(
        "/v1/jobs",
        headers={**ADMIN, "Content-Type": "application/toml"},
        content=job_toml("second", fresh.artifact),
    )
    assert "still running" in error_of(busy, 409)
    stopped = fresh.http.post("/v1/jobs/digits/stop", headers=ADMIN).json()
    assert stopped["status"] == "stopped" and not stopped["active"]
    assert c.finished.is_set() and c.running.is_set()  # woken so the run loop sees the stop
    assert fresh.control.store.job("digits")["status"] == "stopped"  # type: ignore[index]
    for action in ("pause", "resume", "stop"):
        assert "not running" in error_of(
            fresh.http.post(f"/v1/jobs/digits/{action}", headers=ADMIN), 409
        )
    assert "old" in error_of(fresh.http.post("/v1/jobs/old/pause", headers=ADMIN), 409)
    error_of(fresh.http.post("/v1/jobs/ghost/pause", headers=ADMIN), 404)

    created = fresh.http.post(
        "/v1/jobs",
        headers=ADMIN,
        json={
            "job": {"name": "second", "fleet": "test", "artifact": str(fresh.artifact), "rounds": 3}
        },
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/jobs/second"
    assert created.json()["status"] == "running" and created.json()["active"]
    assert [j.name for j in fresh.control.submitted] == ["second"]
    assert fresh.http.get("/v1/fleet", headers=READ).json()["job"]["id"] == "second"
    again = fresh.http.post(
        "/v1/jobs",
        headers={**ADMIN, "Content-Type": "application/toml"},
        content=job_toml("old", fresh.artifact),
    )
    assert "already exists" in error_of(again, 409)


@pytest.mark.parametrize(
    ("body", "ctype", "needle"),
    [
        (b"[job]\nname = 'x'", "application/toml", "missing"),
        (b"not toml = = =", "application/toml", "not valid TOML"),
        (b"{", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "table"),
        (b"\xff\xfe", "application/toml", "UTF-8"),
        (b"{}", "image/png", "application/toml"),
        (
            b'{"job": {"name": "x", "fleet": "test", "artifact": "a", "rounds": 0}}',
            "application/json",
            "rounds",
        ),
        (
            b'{"job": {"name": "x", "fleet": "t", "artifact": "a", "rounds": 1}, "selection": 3}',
            "application/json",
            "[selection] must be a table",
        ),
        (
            b'{"job": {"name": "x", "fleet": "t", "artifact": "a", "rounds": 1, "seed": [1]}}',
            "application/json",
            "job.seed must be an integer",
        ),
        (b"x" * (300 * 1024), "application/toml", "limit"),
    ],
)
def test_invalid_job_config_is_422(env: Env, body: bytes, ctype: str, needle: str) -> None:
    resp = env.http.post("/v1/jobs", headers={**ADMIN, "Content-Type": ctype}, content=body)
    assert needle in error_of(resp, 422)


def rounds_count(store: Store) -> int:
    return sum(len(store.rounds(job["id"])) for job in store.jobs().items)


toml_values = st.recursive(
    st.one_of(
        st.integers(-10, 10**12), st.floats(allow_nan=False), st.text(max_size=12), st.booleans()
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "target_reports",
    "min_reports",
    "over_selection",
    "selection_timeout_s",
    "min_battery",
    "local_epochs",
    "lr",
    "lr_schedule",
    "lr_decay",
    "name",
    "momentum",
    "beta1",
    "epsilon",
    "central_every",
    "central_data",
    "federated_every",
    "unknown",
]
job_tables = st.fixed_dictionaries(
    {
        "job": st.fixed_dictionaries(
            {
                "name": st.sampled_from(["fuzz", "digits"]) | toml_values,
                "fleet": st.just("test") | toml_values,
                "artifact": st.just("model") | toml_values,
                "rounds": st.integers(-2, 5) | toml_values,
            },
            optional={k: toml_values for k in ("seed", "codec", "dp", "other")},
        ),
    },
    optional={
        k: st.dictionaries(st.sampled_from(FIELDS), st.integers(-1, 3) | toml_values, max_size=4)
        | toml_values
        for k in ("selection", "training", "server_optimizer", "evaluation", "secagg")
    },
)


def _toml_text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


bodies = st.one_of(
    st.tuples(
        st.binary(max_size=300), st.sampled_from(["application/toml", "application/json", ""])
    ),
    st.tuples(job_tables.map(lambda d: json.dumps(d).encode()), st.just("application/json")),
    st.tuples(
        job_tables.map(
            lambda d: "\n".join(f"{k} = {_toml_text(v)}" for k, v in d.items()).encode()
        ),
        st.just("application/toml"),
    ),
    st.tuples(st.text(max_size=200).map(str.encode), st.just("text/plain")),
)


def test_fuzz_job_bodies_never_5xx_nor_lose_rounds(env: Env) -> None:
    store = env.control.store
    before = rounds_count(store)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def check(case: tuple[bytes, str]) -> None:
        body, ctype = case
        resp = env.http.post("/v1/jobs", headers={**ADMIN, "Content-Type": ctype}, content=body)
        assert resp.status_code in (409, 422), resp.text
        error_of(resp, resp.status_code)

    check()
    assert rounds_count(store) == before
    assert env.control.job is not None and env.control.job.name == "digits"
