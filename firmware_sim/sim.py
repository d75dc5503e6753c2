"""`fedge sim`: prepare a fleet (data shards, device configs, artifact, job), run it, summarise it."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.edge_client import event_loop
from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.data import save_npz_dataset
from fedge.edge_client.errors import ConfigError, PrivacyError
from fedge.edge_client.identity import issue_identity_certificate, load_or_create_identity
from fedge.edge_client.privacy import parse_dp_spec
from fedge.edge_client.protocol.envelope import PROTOCOL_VERSION
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.firmware_sim.availability import load_trace
from fedge.firmware_sim.fleet import DeviceSpec, Fleet, WorkerArgs
from fedge.firmware_sim.partition import parse_partition_spec, partition, split_local
from fedge.firmware_sim.plots import plot_summary, write_rounds_csv
from fedge.firmware_sim.profiles import assign_profiles, profile_mix
from fedge.server.app import FedgeServer
from fedge.server.broker import EmbeddedBroker, free_port
from fedge.server.job import JobConfig, parse_job_config
from fedge.server.settings import ServerSettings

log = logging.getLogger("fedge.sim")

DEFAULT_MODELS = {"digits": "mlp-digits", "fashion-mnist": "cnn-fmnist"}


@dataclass(frozen=True)
class SimConfig:
    """Everything `fedge sim` takes (see `fedge sim --help`)."""

    out: Path
    devices: int = 50
    rounds: int = 15
    dataset: str = "digits"
    model: str | None = None
    partition: str = "dirichlet:0.5"
    profiles: str = "default"
    clients_per_round: int = 10
    over_selection: float = 1.3
    wake_all: bool = False
    dropout: float | None = None
    seed: int = 0
    broker: str | None = None
    compression: str = "none"
    downlink: str | None = None
    secagg: bool = False
    secagg_clip: float = 2.0
    secagg_bits: int = 16
    secagg_stage_timeout_s: float = 3.0
    dp: str | None = None
    local_epochs: int = 1
    lr: float = 0.1
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    batch_size: int = 32
    round_deadline_s: float = 30.0
    selection_timeout_s: float = 10.0
    min_report_fraction: float = 0.6
    test_fraction: float = 0.2
    workers: int = 2
    speedup: float = 1.0
    start_hour: float = 0.0
    availability: str | None = None
    trace: Path | None = None
    federated_eval_every: int = 0
    artifact: Path | None = None
    http_port: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @property
    def secure(self) -> bool:
        """Secure aggregation on: asked for, or implied by distributed DP (which needs it)."""
        return self.secagg or (self.dp is not None and parse_dp_spec(self.dp).requires_secagg)


@dataclass
class SimPlan:
    """What `prepare` produced on disk."""

    job: JobConfig
    devices: list[DeviceSpec]
    params: int
    signing_key_file: Path
    broker_port: int
    enrolment_key_file: Path
    extra: dict[str, Any] = field(default_factory=dict)


def validate_sim_config(c: SimConfig) -> None:
    """Refuse impossible settings with a clear message before doing any work."""
    if c.dataset not in DEFAULT_MODELS:
        raise ConfigError(f"--dataset must be one of {sorted(DEFAULT_MODELS)}, got {c.dataset!r}")
    if c.devices < 1 or c.rounds < 1:
        raise ConfigError("--devices and --rounds must be >= 1")
    if not 1 <= c.clients_per_round <= c.devices:
        raise ConfigError(f"--clients-per-round must be between 1 and --devices ({c.devices})")
    if c.dropout is not None and not 0.0 <= c.dropout < 1.0:
        raise ConfigError("--dropout must be in [0, 1)")
    if c.speedup <= 0:
        raise ConfigError("--speedup must be > 0")
    if c.dp is not None:
        try:
            parse_dp_spec(c.dp)
        except PrivacyError as exc:
            raise ConfigError(f"--dp: {exc}") from exc


def _load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from fedge.model_export.datasets import load_digits_arrays, load_fashion_mnist

    return load_digits_arrays() if name == "digits" else load_fashion_mnist()


# Bump when the exporter's graphs change, so cached artifacts of older graphs are not reused.
ARTIFACT_GRAPH_GENERATION = 2


def cached_artifact_dir(model: str, batch_size: int, seed: int) -> Path:
    """Where the simulator keeps its export of a zoo model between runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedge" / "artifacts"
    return cache / f"{model}-b{batch_size}-s{seed}-g{ARTIFACT_GRAPH_GENERATION}"


def _artifact_dir(c: SimConfig, model: str) -> Path:
    if c.artifact is not None:
        return c.artifact
    target = cached_artifact_dir(model, c.batch_size, c.seed)
    if not (target / "manifest.json").exists():
        from fedge.model_export import export_model

        log.info("exporting %s into %s", model, target)
        export_model(model, target, batch_size=c.batch_size, seed=c.seed)
    return target


def _device_toml(
    device_id: str, fleet: str, broker_url: str, profile: str, key_file: Path, enrolment_pub: Path
) -> str:
    return (
        f'[device]\nid = "{device_id}"\nfleet = "{fleet}"\nstate_dir = "state"\nprofile = "{profile}"\n\n'
        f'[broker]\nurl = "{broker_url}"\n\n'
        f'[data]\ntrain = "train.npz"\ntest = "test.npz"\n\n'
        f'[identity]\nkey_file = "identity.key"\ncert_file = "identity.cert"\n\n'
        f'[server]\nsigning_public_key = "{key_file}"\nenrolment_public_key = "{enrolment_pub}"\n'
    )


def _enrol(folder: Path, fleet: str, device_id: str, enrolment: Ed25519PrivateKey) -> None:
    """The simulation is its own enrolment authority: identity key + certificate per device."""
    identity = load_or_create_identity(folder / "identity.key")
    cert = issue_identity_certificate(enrolment, fleet, device_id, identity.public_key())
    (folder / "identity.cert").write_bytes(msgpack.packb(cert.to_wire(), use_bin_type=True))


def prepare(c: SimConfig, broker_url: str) -> SimPlan:
    """Write device folders (data shard, test split, device.toml), the artifact and the job."""
    validate_sim_config(c)
    out = c.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("server", "devices"):  # a simulation always starts from a fresh fleet and server
        shutil.rmtree(out / stale, ignore_errors=True)
    model = c.model or DEFAULT_MODELS[c.dataset]
    artifact_dir = _artifact_dir(c, model)
    manifest = load_artifact(artifact_dir).manifest
    x_train, y_train, x_test, y_test = _load_dataset(c.dataset)
    spec = parse_partition_spec(c.partition)
    parts = partition(y_train, c.devices, spec, c.seed, min_size=2)
    profiles = assign_profiles(c.devices, profile_mix(c.profiles), c.seed)
    traces = load_trace(c.trace) if c.trace else {}
    key_file = out / "server" / "signing.key"
    load_or_create_signing_key(key_file)
    pub = key_file.with_suffix(".pub")
    enrolment_file = out / "server" / "enrolment.key"
    enrolment = load_or_create_signing_key(enrolment_file)  # an Ed25519 key, like the signing key
    enrolment_pub = enrolment_file.with_suffix(".pub")
    fleet = "sim"
    devices: list[DeviceSpec] = []
    for i, (idx, profile) in enumerate(zip(parts, profiles, strict=True)):
        device_id = f"dev-{i:05d}"
        folder = out / "devices" / device_id
        folder.mkdir(parents=True, exist_ok=True)
        train_idx, test_idx = split_local(idx, c.test_fraction, (c.seed, i))
        save_npz_dataset(folder / "train.npz", x_train[train_idx], y_train[train_idx])
        save_npz_dataset(folder / "test.npz", x_train[test_idx], y_train[test_idx])
        (folder / "device.toml").write_text(
            _device_toml(device_id, fleet, broker_url, profile, pub, enrolment_pub)
        )
        if c.secure:
            _enrol(folder, fleet, device_id, enrolment)
        trace = traces.get(device_id)
        devices.append(
            DeviceSpec(
                index=i,
                folder=str(folder),
                profile=profile,
                availability=c.availability,
                trace=trace.intervals if trace else None,
                trace_period_s=trace.period_s if trace else None,
            )
        )
    central = out / "central_test.npz"
    save_npz_dataset(central, x_test, y_test)
    k = c.clients_per_round
    job = parse_job_config(
        {
            "job": {
                "name": "sim",
                "fleet": fleet,
                "artifact": str(Path(artifact_dir).resolve()),
                "rounds": c.rounds,
                "seed": c.seed,
                "codec": c.compression,
                **({"downlink": c.downlink} if c.downlink else {}),
                **({"dp": c.dp} if c.dp else {}),
            },
            "secagg": {
                "enabled": True,
                "clip": c.secagg_clip,
                "bits": c.secagg_bits,
                "dropout_rate": max(c.dropout or 0.0, 0.1),
                "stage_timeout_s": c.secagg_stage_timeout_s,
            }
            if c.secure
            else {},
            "selection": {
                "target_reports": k,
                "over_selection": c.over_selection,
                "min_reports": max(1, math.ceil(k * c.min_report_fraction)),
                "selection_timeout_s": c.selection_timeout_s,
                "round_deadline_s": c.round_deadline_s,
                "retry_window_s": 2.0,
                "wake_all": c.wake_all,
            },
            # Secure mode scales each update by weight / max_example_weight into a fixed range, so
            # the cap is the largest shard (the default 10,000 would waste the ring's resolution).
            "training": {
                "local_epochs": c.local_epochs,
                "lr": c.lr,
                "max_example_weight": max(len(p) for p in parts),
            },
            "server_optimizer": {"name": c.server_optimizer, "lr": c.server_lr},
            "evaluation": {
                "central_every": 1,
                "central_data": str(central),
                "federated_every": c.federated_eval_every,
            },
        },
        out,
    )
    return SimPlan(
        job=job,
        devices=devices,
        params=manifest.param_count,
        signing_key_file=key_file,
        broker_port=0,
        enrolment_key_file=enrolment_file,
    )


def _summary(
    c: SimConfig,
    plan: SimPlan,
    rows: list[dict[str, Any]],
    device_stats: dict[str, Any],
    wall_s: float,
    status: str,
) -> dict[str, Any]:
    train = [r for r in rows if r["kind"] == "train"]
    committed = [r for r in train if r["state"] == "committed"]
    rounds = [
        {
            "round": r["round"],
            "attempt": r["attempt"],
            "accuracy": r["eval_accuracy"],
            "loss": r["eval_loss"],
            "train_accuracy": r["train_accuracy"],
            "train_loss": r["train_loss"],
            "selected": r["selected"],
            "reported": r["reported"],
            "dropped": r["dropped"],
            "refused": r["refused"],
            "uplink_bytes": r["uplink_bytes"],
            "downlink_bytes": r["downlink_bytes"],
            "duration_s": round((r["ended"] or r["started"]) - r["started"], 3),
            "epsilon": r["epsilon"],
        }
        for r in committed
    ]
    failed = [
        {
            "round": r["round"],
            "attempt": r["attempt"],
            "reason": r["reason"],
            "selected": r["selected"],
            "reported": r["reported"],
            "dropped": r["dropped"],
        }
        for r in train
        if r["state"] == "failed"
    ]
    fed_eval = [
        {"round": r["round"], "accuracy": r["fed_eval_accuracy"], "loss": r["fed_eval_loss"]}
        for r in rows
        if r["kind"] == "evaluate" and r["state"] == "committed"
    ]
    return {
        "config": c.to_dict(),
        "protocol": PROTOCOL_VERSION,  # the byte counts depend on it
        "status": status,
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "params": plan.params,
        "rounds": rounds,
        "failed_rounds": failed,
        "federated_evaluation": fed_eval,
        "devices": device_stats,
        "wall_time_s": round(wall_s, 2),
    }


async def _monitor(server: FedgeServer, c: SimConfig, runner: asyncio.Task[str]) -> None:
    """Live rich progress of the rounds while the server (``runner``) runs.

    It reads the store only while ``runner`` is not done: the server closes the store in the
    same step that ends the task, so a poll can never meet a closed store."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    await server.ready.wait()
    coordinator = server.coordinator
    assert coordinator is not None
    with Progress(
        TextColumn("[bold]fedge sim"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        disable=not c.progress,
    ) as progress:
        task = progress.add_task("starting", total=c.rounds)
        while not runner.done():
            rows = server.store.rounds(coordinator.job.name, "train")
            done = [r for r in rows if r["state"] == "committed"]
            cur = coordinator.runtime.current
            last = done[-1] if done else None
            acc = (
                f"{last['eval_accuracy']:.3f}"
                if last and last["eval_accuracy"] is not None
                else "-"
            )
            up = sum(r["uplink_bytes"] or 0 for r in done)
            state = f"round {cur.number} {cur.state.value}" if cur else "-"
            progress.update(
                task,
                completed=len(done),
                description=(
                    f"{state} | reported {last['reported'] if last else 0}/{last['selected'] if last else 0}"
                    f" dropped {sum(r['dropped'] or 0 for r in rows)} | acc {acc} | up {up / 1e6:.2f} MB"
                ),
            )
            await asyncio.wait({runner}, timeout=0.5)


def run_sim(c: SimConfig) -> dict[str, Any]:
    """Prepare and run a whole simulation; write summary.json, rounds.csv and plots into c.out."""
    t0 = time.time()
    broker = None
    broker_url = c.broker
    if broker_url is None:
        broker = EmbeddedBroker()
        broker.start()
        broker_url = broker.url
        log.info("embedded amqtt broker on %s", broker_url)
    try:
        plan = prepare(c, broker_url)
        settings = ServerSettings(
            state_dir=c.out.resolve() / "server",
            broker_url=broker_url,
            http_port=c.http_port or free_port(),
            signing_key_file=plan.signing_key_file,
            expect_devices=c.devices,
            enrolment_key_file=plan.enrolment_key_file,
        )
        server = FedgeServer(plan.job, settings)
        print(f"dashboard: {server.dashboard_url}", flush=True)
        workers = max(1, min(c.workers, c.devices))
        groups = [tuple(plan.devices[i::workers]) for i in range(workers)]
        fleet = Fleet(
            [
                WorkerArgs(
                    devices=g,
                    seed=c.seed,
                    speedup=c.speedup,
                    start_s=c.start_hour * 3600.0,
                    clock_wall0=time.time(),
                    dropout_p=c.dropout,
                    checkin_timeout_s=c.selection_timeout_s + 5,
                    connect_spread_s=min(10.0, 0.01 * len(g)),
                    away_after_dropout_s=c.round_deadline_s,
                    log_level=logging.WARNING,
                )
                for g in groups
            ]
        )

        async def main() -> str:
            runner = asyncio.create_task(server.run())
            monitor = asyncio.create_task(_monitor(server, c, runner))
            await server.ready.wait()
            fleet.start()
            status = await runner
            await monitor
            return status

        try:
            status = event_loop.run(main())
        finally:
            device_stats = fleet.stop()
        from fedge.server.store import SQLiteStore

        store = SQLiteStore(settings.state_dir / "fedge.db")
        rows = store.rounds(plan.job.name)
        job_row = store.job(plan.job.name) or {}
        store.close()
    finally:
        if broker is not None:
            broker.stop()
    summary = _summary(c, plan, rows, device_stats, time.time() - t0, status)
    summary["status_reason"] = job_row.get("reason")
    out = c.out.resolve()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if summary["rounds"]:  # a job that committed nothing still leaves its summary.json
        write_rounds_csv(summary, out / "rounds.csv")
        plot_summary(summary, out)
    return summary
