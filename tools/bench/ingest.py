"""Benchmark of server ingest (updates/s, in-process and through Mosquitto) and per-round overhead.

Run ``python -m tools.bench.ingest [--quick] [--out DIR]``.

1. In-process ingest, for a 784-128-10 MLP (101,770 parameters) and each codec spec:
   ``decode path`` is the server's own steps per update message (``parse_device_topic``,
   envelope ``unpack``, ``ReplayGuard.check``, ``messages.parse``, ``codec.decode_update``,
   ``StreamingMean.add``); ``coordinator`` feeds the same messages to a real
   ``Coordinator.on_message`` (adds the round checks, the SQLite participant row and
   building the Ack), with a publish function that drops the Acks.
2. Ingest through a real Mosquitto: K publisher processes (paho, QoS 1) send pre-built update
   messages to the devices' up topics; a real ``Coordinator`` behind the server's ``MqttLink``
   consumes them and publishes an Ack per update. Rate = updates / (release of the
   publishers -> last update accepted).
   Both parts open the round by hand (``open_round``: the steps of ``Coordinator._run_round``
   up to COLLECTING, with every bench device selected), so no check-ins or tasks are involved.
   Every message carries its own envelope (device id, message id); the codec payloads come
   from a pool of distinct encoded random deltas (decoding cost does not depend on values).
3. Per-round overhead with 10, 100 and 500 devices, all selected: ``firmware_sim.sim.run_sim``
   in a child process bounded in time (real server, real agents in 2 worker processes,
   Mosquitto), ``mlp-digits``, IID digits,
   profile pi5 with ``--speedup 1000`` (no simulated sleeps), no dropouts. Round 1 (fleet
   start-up) is excluded. ``overhead = round wall - slowest device's training``; agents of a
   worker process share one interpreter and train one after another, so the table also shows
   the largest per-worker sum of training times, and CPU per selected device for the server,
   the simulated devices and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import psutil

from fedge.edge_client import codec
from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.mqtt_link import LinkSettings, MqttLink
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, ReplayGuard, unpack
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.firmware_sim.sim import SimConfig, run_sim
from fedge.server.aggregator import StreamingMean
from fedge.server.blobs import BlobStore
from fedge.server.coordinator import Coordinator, Publish
from fedge.server.job import JobConfig, SelectionConfig, validate
from fedge.server.rounds import RoundRun, RoundState
from fedge.server.selection import round_seed
from fedge.server.store import Store
from fedge.tools.bench._common import (
    BENCH_FLEET,
    CpuSampler,
    Mosquitto,
    Section,
    bench_mlp_artifact,
    command_line,
    machine_load,
    quiet_logs,
    raise_fd_limit,
    report_sections,
    write_json,
)

MODULE = "tools.bench.ingest"
SPECS = ("none", "q8", "topk:0.01+q8", "randk:0.01+q8")
JOB = "bench"
POOL = 16  # distinct encoded payloads per spec (per publisher)
SIM_BUDGET_S = 180.0  # wall-time bound of one simulated fleet


@dataclass(frozen=True)
class IngestRow:
    """One measured ingest configuration."""

    path: str
    spec: str
    updates: int
    bytes_per_update: int
    seconds: float
    cpu_s: float  # CPU time of the consuming (server) process over the same window
    handler_s: float | None = None  # time inside Coordinator.on_message (mosquitto rows)
    ack_wait_s: float | None = None  # of which awaiting the Ack publish (PUBACK from the broker)

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds > 0 else 0.0

    @property
    def updates_per_cpu_s(self) -> float:
        return self.updates / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        if self.seconds <= 0:
            return 0.0
        return self.updates * self.bytes_per_update / self.seconds / 1e6


# ---- building update messages --------------------------------------------------------------


def encode_pool(spec: str, shapes: Sequence[tuple[int, ...]], seed_of_round: int, count: int,
                seed: int) -> list[bytes]:
    """``count`` codec payloads of random deltas (std 0.01) encoded with ``spec``."""
    rng = np.random.default_rng(seed)
    parsed = codec.parse_spec(spec)
    return [codec.encode_update([rng.normal(0.0, 0.01, s).astype(np.float32) for s in shapes],
                                parsed, shapes, round_seed=seed_of_round, rng=rng)
            for _ in range(count)]


def update_messages(payloads: Sequence[bytes], device_ids: Sequence[str],
                    base_weights: str, round_id: int) -> list[tuple[str, bytes]]:
    """One packed Update envelope per device, on that device's up topic."""
    out = []
    for i, device_id in enumerate(device_ids):
        update = m.Update(payload=payloads[i % len(payloads)],
                          base_weights=m.base_digest(base_weights),
                          metrics=m.TrainMetrics(loss=0.5, accuracy=0.5, examples=32,
                                                 train_time_s=0.01))
        envelope = m.make(update, job_id=JOB, round_id=round_id)
        out.append((topics.device_up(BENCH_FLEET, device_id), envelope.pack()))
    return out


def device_ids(count: int, prefix: str = "b") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(count)]


# ---- a real coordinator with a round open for the bench devices -----------------------------


def bench_coordinator(artifact_dir: Path, spec: str, state_dir: Path, publish: Publish,
                      expected: int) -> Coordinator:
    """A real Coordinator for the bench artifact, its weights initialised (no round yet)."""
    job = validate(JobConfig(name=JOB, fleet=BENCH_FLEET, artifact=artifact_dir, rounds=1,
                             codec=spec, selection=SelectionConfig(target_reports=expected,
                                                                   min_reports=1)))
    key = load_or_create_signing_key(state_dir / "signing.key")
    coordinator = Coordinator(job, load_artifact(artifact_dir), Store(state_dir / "fedge.db"),
                              BlobStore(state_dir / "blobs"), key, "http://127.0.0.1:1",
                              publish=publish)
    coordinator.restore_or_init()
    return coordinator


def open_round(coordinator: Coordinator, selected: Sequence[str]) -> RoundRun:
    """Open training round 1 with ``selected`` chosen, as ``Coordinator._run_round`` does."""
    job, store = coordinator.job, coordinator.store
    rid = store.start_round(job.name, 1, 1, "train", RoundState.SELECTING.value)
    rnd = RoundRun(rid=rid, job_id=job.name, number=1, attempt=1, kind="train",
                   round_seed=round_seed(job.seed, job.name, 1, 1))
    rnd.target = len(selected)
    rnd.aggregator = StreamingMean(coordinator.shapes, job.training.max_example_weight)
    coordinator.current = rnd
    rnd.selected = set(selected)
    rnd.deadline = time.time() + 3600.0
    rnd.advance(RoundState.CONFIGURING)
    store.set_participants(rid, list(selected))
    store.transition(rid, RoundState.CONFIGURING.value, selected=len(selected))
    rnd.advance(RoundState.COLLECTING)
    store.transition(rid, RoundState.COLLECTING.value)
    return rnd


def check_round(rnd: RoundRun, expected: int, what: str) -> None:
    """Refuse to report a rate unless every update was accepted."""
    if len(rnd.reports) != expected or rnd.refused:
        raise ConfigError(f"{what}: {len(rnd.reports)} of {expected} updates accepted, "
                          f"{rnd.refused} refused")


# ---- 1. in-process --------------------------------------------------------------------------


def decode_path(spec: str, shapes: Sequence[tuple[int, ...]], count: int) -> IngestRow:
    """Time the server's per-update steps on ``count`` pre-built messages."""
    seed_of_round = 12345
    messages = update_messages(encode_pool(spec, shapes, seed_of_round, POOL, 1),
                               device_ids(count), "0" * 64, 1)
    parsed = codec.parse_spec(spec)
    aggregator = StreamingMean(shapes, 10_000)
    replay = ReplayGuard()
    t0, c0 = time.perf_counter(), time.process_time()
    for topic, data in messages:
        _, device_id, _ = topics.parse_device_topic(topic)
        envelope = unpack(data, device_id, DEFAULT_LIMITS)
        replay.check(envelope)
        update = m.parse(envelope, DEFAULT_LIMITS)
        assert isinstance(update, m.Update)
        delta = codec.decode_update(update.payload, parsed, shapes, round_seed=seed_of_round)
        aggregator.add(delta, update.metrics.examples)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if aggregator.count != count:
        raise ConfigError(f"decode path accumulated {aggregator.count} of {count} updates")
    return IngestRow("decode path", spec, count, _mean_len(messages), seconds, cpu)


def coordinator_in_process(spec: str, artifact_dir: Path, count: int, state_dir: Path) -> IngestRow:
    """Time a real ``Coordinator.on_message`` on ``count`` pre-built update messages."""

    async def drop(topic: str, data: bytes, qos: int = 1) -> bool:
        return True

    async def run() -> IngestRow:
        coordinator = bench_coordinator(artifact_dir, spec, state_dir, drop, count)
        ids = device_ids(count)
        rnd = open_round(coordinator, ids)
        messages = update_messages(
            encode_pool(spec, coordinator.shapes, rnd.round_seed, POOL, 2), ids,
            coordinator.weights_sha, rnd.number)
        t0, c0 = time.perf_counter(), time.process_time()
        for topic, data in messages:
            await coordinator.on_message(topic, data)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        coordinator.store.close()
        check_round(rnd, count, f"coordinator {spec}")
        return IngestRow("coordinator", spec, count, _mean_len(messages), seconds, cpu)

    return asyncio.run(run())


def _mean_len(messages: Sequence[tuple[str, bytes]]) -> int:
    return round(sum(len(d) for _, d in messages) / max(len(messages), 1))


# ---- 2. through Mosquitto -------------------------------------------------------------------


@dataclass(frozen=True)
class PublisherArgs:
    """What one publisher process needs to build and send its share of the updates."""

    index: int
    port: int
    spec: str
    shapes: tuple[tuple[int, ...], ...]
    round_seed: int
    base_weights: str
    devices: tuple[str, ...]


def publisher_main(args: PublisherArgs, ready: Any, go: Any, results: Any) -> None:
    """Process entry: build the messages, wait for ``go``, publish them all at QoS 1."""
    payloads = encode_pool(args.spec, args.shapes, args.round_seed, POOL, 100 + args.index)
    messages = update_messages(payloads, args.devices, args.base_weights, 1)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{args.index}",
                         protocol=paho.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    try:
        ready.set()
        if not go.wait(timeout=300):
            results.put({"index": args.index, "error": "never released"})
            return
        t0 = time.perf_counter()
        infos = [client.publish(topic, data, qos=1) for topic, data in messages]
        for info in infos:
            info.wait_for_publish(timeout=120)
        results.put({"index": args.index, "sent": sum(i.is_published() for i in infos),
                     "seconds": time.perf_counter() - t0})
    finally:
        client.disconnect()
        client.loop_stop()


def through_mosquitto(spec: str, artifact_dir: Path, count: int, publishers: int,
                      broker: Mosquitto, state_dir: Path, timeout_s: float = 180.0) -> IngestRow:
    """Updates/s from K publisher processes, through Mosquitto, into a real Coordinator."""
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(publishers)]
    go = ctx.Event()
    results = ctx.Queue()

    async def run() -> IngestRow:
        stop = asyncio.Event()
        link = MqttLink(LinkSettings(
            host="127.0.0.1", port=broker.port, client_id=f"fedge-server-{BENCH_FLEET}",
            subscriptions=(topics.server_up_filter(BENCH_FLEET),
                           topics.server_presence_filter(BENCH_FLEET)),
            max_inflight=1000))
        spent = {"handler": 0.0, "ack": 0.0}

        async def timed_publish(topic: str, data: bytes, qos: int = 1) -> bool:
            t = time.perf_counter()
            try:
                return await link.publish(topic, data, qos=qos)
            finally:
                spent["ack"] += time.perf_counter() - t

        async def timed_handler(topic: str, data: bytes) -> None:
            t = time.perf_counter()
            try:
                await coordinator.on_message(topic, data)
            finally:
                spent["handler"] += time.perf_counter() - t

        coordinator = bench_coordinator(artifact_dir, spec, state_dir, timed_publish, count)
        ids = device_ids(count)
        rnd = open_round(coordinator, ids)
        link_task = asyncio.create_task(link.run(timed_handler, stop))
        await asyncio.wait_for(link.connected.wait(), timeout=30)
        procs = [ctx.Process(target=publisher_main, daemon=True, args=(PublisherArgs(
            i, broker.port, spec, tuple(coordinator.shapes), rnd.round_seed,
            coordinator.weights_sha, tuple(ids[i::publishers])), ready[i], go, results))
            for i in range(publishers)]
        for proc in procs:
            proc.start()
        try:
            for event in ready:
                if not await asyncio.to_thread(event.wait, 120):
                    raise ConfigError("a publisher process did not get ready within 120 s")
            t0, c0 = time.perf_counter(), time.process_time()
            go.set()
            try:
                await asyncio.wait_for(rnd.enough.wait(), timeout=timeout_s)
            except TimeoutError:
                pass
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            check_round(rnd, count, f"mosquitto {spec}")
            size = round(rnd.uplink_bytes / max(len(rnd.reports), 1))
            return IngestRow(f"mosquitto K={publishers}", spec, count, size, seconds, cpu,
                             spent["handler"], spent["ack"])
        finally:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.terminate()
            stop.set()
            await link_task
            coordinator.store.close()

    return asyncio.run(run())


# ---- 3. per-round overhead -------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRow:
    """Per-round overhead of one simulated fleet (means over the measured rounds)."""

    devices: int
    rounds: int
    selected: float
    reported: float
    wall_s: float
    slowest_train_s: float
    serial_train_s: float
    select_s: float
    collect_s: float
    commit_s: float
    server_cpu_ms: float | None = None  # CPU per selected device: server process,
    devices_cpu_ms: float | None = None  # simulator worker processes (the agents),
    broker_cpu_ms: float | None = None  # Mosquitto, over the measured rounds

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.slowest_train_s

    @property
    def overhead_per_device_ms(self) -> float:
        return 1000.0 * self.overhead_s / max(self.selected, 1.0)

    @property
    def overhead_no_serial_s(self) -> float:
        return self.wall_s - self.serial_train_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"overhead_s": self.overhead_s,
                               "overhead_per_device_ms": self.overhead_per_device_ms,
                               "overhead_no_serial_s": self.overhead_no_serial_s}


def round_stats(db: Path, job: str, workers: int, skip_first: int = 1) -> list[dict[str, float]]:
    """Per committed training round after the first ``skip_first``: wall, training, phases.

    Device ``dev-NNNNN`` runs in simulator worker ``NNNNN % workers`` (as ``run_sim`` deals them).
    """
    store = Store(db)
    try:
        out = []
        rows = [r for r in store.rounds(job, "train") if r["state"] == "committed"]
        for row in rows[skip_first:]:
            at = {t["state"]: t["at"] for t in store.transitions(row["rid"])}
            per_worker = [0.0] * workers
            for p in store.participants(row["rid"]):
                if p["status"] == "reported" and p["train_time_s"] is not None:
                    per_worker[int(p["device_id"].rsplit("-", 1)[1]) % workers] += p["train_time_s"]
            out.append({
                "round": row["round"], "started": row["started"], "ended": row["ended"],
                "selected": row["selected"], "reported": row["reported"],
                "wall_s": row["ended"] - row["started"],
                "slowest_train_s": row["slowest_train_s"] or 0.0,
                "serial_train_s": max(per_worker),
                "select_s": at["configuring"] - row["started"],
                "collect_s": at["aggregating"] - at["collecting"],
                "commit_s": row["ended"] - at["aggregating"],
            })
        return out
    finally:
        store.close()


def summarise_rounds(devices: int, stats: Sequence[dict[str, float]],
                     cpu: dict[str, float] | None = None) -> RoundRow:
    """Means over the measured rounds; ``cpu`` = CPU seconds per group over all of them."""
    if not stats:
        raise ConfigError(f"{devices} devices: no measured round committed")

    def mean(key: str) -> float:
        return float(statistics.fmean(s[key] for s in stats))

    def per_device_ms(group: str) -> float | None:
        selected = sum(s["selected"] for s in stats)
        return None if cpu is None else 1000.0 * cpu.get(group, 0.0) / max(selected, 1)

    return RoundRow(devices, len(stats), mean("selected"), mean("reported"), mean("wall_s"),
                    mean("slowest_train_s"), mean("serial_train_s"), mean("select_s"),
                    mean("collect_s"), mean("commit_s"), per_device_ms("server"),
                    per_device_ms("devices"), per_device_ms("broker"))


@dataclass(frozen=True)
class SimOutcome:
    """One simulator run: how the job ended, its measured rounds, and failed round attempts."""

    devices: int
    status: str
    row: RoundRow | None
    stats: list[dict[str, float]]
    failures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices, "status": self.status, "failures": self.failures,
                "row": self.row.to_dict() if self.row else None, "rounds": self.stats}


def _sim_child(config: SimConfig, results: Any) -> None:
    """Process entry: run the simulation; SIGTERM exits through run_sim's cleanup."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    quiet_logs()
    summary = run_sim(config)
    results.put(str(summary["status"]))


def unfinished_rounds(db: Path, job: str) -> list[str]:
    """Training round attempts that failed or never ended, with the reason."""
    store = Store(db)
    try:
        return [f"round {r['round']} attempt {r['attempt']}: "
                + (f"{r['reason']} ({r['reported']}/{r['selected']} reported)"
                   if r["state"] == "failed" else f"still {r['state']} when stopped")
                for r in store.rounds(job, "train") if r["state"] != "committed"]
    finally:
        store.close()


def simulate_rounds(config: SimConfig, broker_pid: int, budget_s: float) -> SimOutcome:
    """Run ``config`` with ``run_sim`` in a child process; measure the rounds after the first.

    The child is the server; its children are the simulator workers. CPU is sampled for the
    server, the workers and the broker and split over the measured rounds' window. After
    ``budget_s`` the child is stopped (SIGTERM, which runs the simulator's cleanup). A job
    that fails or times out is reported (status and failed attempts), never raised.
    """
    if config.out.exists():
        shutil.rmtree(config.out)  # a finished job there would be resumed, not run
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_sim_child, args=(config, results), name="fedge-bench-sim")

    def groups() -> dict[str, list[int]]:
        try:
            kids = [c.pid for c in psutil.Process(child.pid).children(recursive=True)]
        except psutil.Error:
            kids = []
        return {"server": [child.pid] if child.pid else [], "devices": kids,
                "broker": [broker_pid]}

    child.start()
    sampler = CpuSampler(groups).start()
    try:
        child.join(timeout=budget_s)
        status = f"stopped after {budget_s:.0f} s" if child.is_alive() else "ended"
        if child.is_alive():
            child.terminate()
            child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
    finally:
        sampler.stop()
    if status == "ended":
        status = results.get(timeout=5) if not results.empty() else f"exit {child.exitcode}"
    db = config.out.resolve() / "server" / "fedge.db"
    stats = round_stats(db, "sim", min(config.workers, config.devices)) if db.exists() else []
    cpu = sampler.cpu_between(stats[0]["started"], stats[-1]["ended"]) if stats else None
    failures = unfinished_rounds(db, "sim") if db.exists() else ["no server state written"]
    row = summarise_rounds(config.devices, stats, cpu) if stats else None
    return SimOutcome(config.devices, status, row, stats, failures)


def outcome_note(outcomes: Sequence[SimOutcome]) -> str:
    """The table note: what the columns mean, then any failed job or round attempt."""
    lines = [ROUND_NOTE]
    for o in outcomes:
        if o.status != "finished" or o.failures:
            lines.append(f"{o.devices} devices: job {o.status}; " + "; ".join(o.failures))
    return "\n".join(lines)


def all_selected_config(devices: int, rounds: int, broker_url: str, out: Path) -> SimConfig:
    """Every device selected, ``mlp-digits`` on IID digits, no simulated sleeps or dropouts."""
    return SimConfig(out=out, devices=devices, rounds=rounds, dataset="digits", partition="iid",
                     profiles="pi5", availability="always", dropout=0.0,
                     clients_per_round=devices, broker=broker_url, speedup=1000.0,
                     round_deadline_s=60.0, selection_timeout_s=20.0, workers=2, progress=False)


ROUND_COLUMNS = ("devices", "rounds", "selected", "reported", "wall s", "slowest train s",
                 "overhead s", "overhead/selected ms", "serial train s", "select s",
                 "collect s", "commit s", "server CPU ms/sel", "devices CPU ms/sel",
                 "broker CPU ms/sel")
ROUND_NOTE = ("overhead = round wall - slowest device's training; serial train = largest "
              "per-worker sum of training times (agents of a worker share one interpreter); "
              "select/collect/commit = the round's phases; CPU ms/sel = CPU time of the server "
              "process, the simulator workers and Mosquitto over the measured rounds, per "
              "selected device")


def round_table_rows(rows: Sequence[RoundRow]) -> list[list[object]]:
    return [[r.devices, r.rounds, r.selected, r.reported, round(r.wall_s, 3),
             round(r.slowest_train_s, 4), round(r.overhead_s, 3),
             round(r.overhead_per_device_ms, 2), round(r.serial_train_s, 3),
             round(r.select_s, 3), round(r.collect_s, 3), round(r.commit_s, 3),
             _opt(r.server_cpu_ms), _opt(r.devices_cpu_ms), _opt(r.broker_cpu_ms)] for r in rows]


# ---- the command ------------------------------------------------------------------------------


INGEST_COLUMNS = ("path", "spec", "updates", "bytes/update", "seconds", "updates/s", "MB/s",
                  "server CPU s", "updates/CPU-s", "in handler s", "Ack wait s")


def ingest_table_rows(rows: Sequence[IngestRow]) -> list[list[object]]:
    return [[r.path, r.spec, r.updates, r.bytes_per_update, round(r.seconds, 3),
             round(r.updates_per_s, 1), round(r.mb_per_s, 2), round(r.cpu_s, 3),
             round(r.updates_per_cpu_s, 1), _opt(r.handler_s), _opt(r.ack_wait_s)]
            for r in rows]


def _opt(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _counts(quick: bool) -> dict[str, int]:
    """Updates per spec: enough for a stable rate, bounded in memory (``none`` is 407 kB each)."""
    if quick:
        return {"none": 100, "q8": 200, "topk:0.01+q8": 500, "randk:0.01+q8": 200}
    return {"none": 400, "q8": 800, "topk:0.01+q8": 3000, "randk:0.01+q8": 800}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer updates, fleets of 10 and 100 only")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results directory")
    p.add_argument("--specs", default=",".join(SPECS), help="comma-separated codec specs")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes (K)")
    p.add_argument("--devices", default=None,
                   help="fleet sizes for the round overhead (10,100,500)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per fleet (the first is excluded)")
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: inprocess,mqtt,rounds")
    args = p.parse_args(argv)
    if args.publishers < 1 or args.rounds < 2:
        p.error("--publishers must be >= 1 and --rounds >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write ``<out>/ingest.json``."""
    args = parse_args(argv)
    command = command_line(MODULE)
    quiet_logs()
    skip = {s for s in args.skip.split(",") if s}
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    for spec in specs:
        codec.parse_spec(spec)
    counts = _counts(args.quick)
    sizes = [int(s) for s in (args.devices or ("10,100" if args.quick else "10,100,500")).split(",")
             if s.strip()]
    raise_fd_limit()
    out = args.out.resolve()
    result: dict[str, Any] = {"command": command, "load_start": machine_load()}
    artifact_dir = bench_mlp_artifact(128)
    shapes = [tuple(t.shape) for t in load_artifact(artifact_dir).manifest.tensors]
    result["params"] = int(sum(np.prod(s) for s in shapes))
    ingest: list[IngestRow] = []
    with tempfile.TemporaryDirectory(prefix="fedge-ingest-") as tmp:
        work = Path(tmp)
        if "inprocess" not in skip:
            for spec in specs:
                n = counts.get(spec, 500)
                ingest.append(decode_path(spec, shapes, n))
                ingest.append(coordinator_in_process(spec, artifact_dir, n,
                                                     work / f"inproc-{len(ingest)}"))
        outcomes: list[SimOutcome] = []
        with Mosquitto(work / "broker") as broker:
            if "mqtt" not in skip:
                for spec in specs:
                    ingest.append(through_mosquitto(spec, artifact_dir, counts.get(spec, 500),
                                                    args.publishers, broker,
                                                    work / f"mqtt-{len(ingest)}"))
            if "rounds" not in skip:
                for n in sizes:
                    outcomes.append(simulate_rounds(all_selected_config(
                        n, args.rounds, broker.url, out / "ingest-sim" / f"n{n}"), broker.pid,
                        budget_s=SIM_BUDGET_S))
    result["load_end"] = machine_load()
    result["ingest"] = [asdict(r) | {"updates_per_s": r.updates_per_s, "mb_per_s": r.mb_per_s,
                                     "updates_per_cpu_s": r.updates_per_cpu_s} for r in ingest]
    result["rounds"] = [o.to_dict() for o in outcomes]
    path = write_json(out, "ingest.json", result)
    load = f"load average {result['load_start']['loadavg']} -> {result['load_end']['loadavg']}"
    sections: list[Section] = []
    if ingest:
        sections.append((f"Server ingest, {result['params']:,}-parameter model", INGEST_COLUMNS,
                         ingest_table_rows(ingest), load))
    if outcomes:
        sections.append(("Per-round overhead, every device selected (rounds after the first)",
                         ROUND_COLUMNS, round_table_rows([o.row for o in outcomes if o.row]),
                         outcome_note(outcomes) + f"\n{load}"))
    report_sections(out, "ingest.md", sections, command)
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
