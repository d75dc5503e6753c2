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
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.artifact import load_artifact
from fedge.firmware_sim.sim import SimConfig
from fedge.tools.bench._common import (
    Mosquitto,
    Section,
    bench_mlp_artifact,
    codec_specs,
    command_line,
    int_list,
    load_range,
    machine_load,
    quiet_logs,
    raise_fd_limit,
    report_sections,
    round_or_none,
    write_json,
)
from fedge.tools.bench._ingest_inprocess import coordinator_in_process, decode_path
from fedge.tools.bench._ingest_mosquitto import through_mosquitto
from fedge.tools.bench._ingest_updates import IngestRow
from fedge.tools.bench._round_overhead import SimOutcome, round_section, simulate_rounds

MODULE = "tools.bench.ingest"
SPECS = ("none", "q8", "topk:0.01+q8", "randk:0.01+q8")
SIM_BUDGET_S = 180.0  # wall-time bound of one simulated fleet
INGEST_COLUMNS = (
    "path",
    "spec",
    "updates",
    "bytes/update",
    "seconds",
    "updates/s",
    "MB/s",
    "server CPU s",
    "updates/CPU-s",
    "in handler s",
    "Ack wait s",
)


def all_selected_config(devices: int, rounds: int, broker_url: str, out: Path) -> SimConfig:
    """Every device selected, ``mlp-digits`` on IID digits, no simulated sleeps or dropouts."""
    return SimConfig(
        out=out,
        devices=devices,
        rounds=rounds,
        dataset="digits",
        partition="iid",
        profiles="pi5",
        availability="always",
        dropout=0.0,
        clients_per_round=devices,
        broker=broker_url,
        speedup=1000.0,
        round_deadline_s=60.0,
        selection_timeout_s=20.0,
        workers=2,
        progress=False,
    )


def ingest_table_rows(rows: Sequence[IngestRow]) -> list[list[object]]:
    """Cells of the ingest table, in :data:`INGEST_COLUMNS` order."""
    return [
        [
            r.path,
            r.spec,
            r.updates,
            r.bytes_per_update,
            round(r.seconds, 3),
            round(r.updates_per_s, 1),
            round(r.mb_per_s, 2),
            round(r.cpu_s, 3),
            round(r.updates_per_cpu_s, 1),
            round_or_none(r.handler_s, 3),
            round_or_none(r.ack_wait_s, 3),
        ]
        for r in rows
    ]


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
    p.add_argument(
        "--devices", default=None, help="fleet sizes for the round overhead (10,100,500)"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per fleet (the first is excluded)")
    p.add_argument(
        "--skip", default="", help="comma-separated parts to skip: inprocess,mqtt,rounds"
    )
    args = p.parse_args(argv)
    if args.publishers < 1 or args.rounds < 2:
        p.error("--publishers must be >= 1 and --rounds >= 2")
    return args


@dataclass(frozen=True)
class Plan:
    """What to measure, from the command line: specs, updates per spec, fleet sizes, parts."""

    specs: list[str]
    counts: dict[str, int]
    sizes: list[int]
    skip: set[str]
    publishers: int
    rounds: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        skip = {s for s in args.skip.split(",") if s}
        specs = codec_specs(args.specs, SPECS)
        counts = _counts(args.quick)
        sizes = int_list(args.devices, "10,100" if args.quick else "10,100,500")
        return cls(specs, counts, sizes, skip, args.publishers, args.rounds)


def measure(
    plan: Plan, artifact_dir: Path, shapes: Sequence[tuple[int, ...]], out: Path
) -> tuple[list[IngestRow], list[SimOutcome]]:
    """The parts not skipped: in-process ingest, ingest through Mosquitto, simulated rounds."""
    ingest: list[IngestRow] = []
    with tempfile.TemporaryDirectory(prefix="fedge-ingest-") as tmp:
        work = Path(tmp)
        if "inprocess" not in plan.skip:
            for spec in plan.specs:
                n = plan.counts.get(spec, 500)
                ingest.append(decode_path(spec, shapes, n))
                ingest.append(
                    coordinator_in_process(spec, artifact_dir, n, work / f"inproc-{len(ingest)}")
                )
        outcomes: list[SimOutcome] = []
        with Mosquitto(work / "broker") as broker:
            if "mqtt" not in plan.skip:
                for spec in plan.specs:
                    state_dir = work / f"mqtt-{len(ingest)}"
                    n = plan.counts.get(spec, 500)
                    ingest.append(
                        through_mosquitto(spec, artifact_dir, n, plan.publishers, broker, state_dir)
                    )
            if "rounds" not in plan.skip:
                for n in plan.sizes:
                    config = all_selected_config(
                        n, plan.rounds, broker.url, out / "ingest-sim" / f"n{n}"
                    )
                    outcomes.append(simulate_rounds(config, broker.pid, budget_s=SIM_BUDGET_S))
    return ingest, outcomes


def sections(
    result: dict[str, Any], ingest: Sequence[IngestRow], outcomes: Sequence[SimOutcome]
) -> list[Section]:
    """The tables of the parts that ran, each with its note and the machine load."""
    load = load_range(result)
    out: list[Section] = []
    if ingest:
        title = f"Server ingest, {result['params']:,}-parameter model"
        out.append((title, INGEST_COLUMNS, ingest_table_rows(ingest), load))
    if outcomes:
        title = "Per-round overhead, every device selected (rounds after the first)"
        out.append(round_section(title, outcomes, load))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write ``<out>/ingest.json``."""
    args = parse_args(argv)
    command = command_line(MODULE)
    quiet_logs()
    plan = Plan.of(args)
    raise_fd_limit()
    out = args.out.resolve()
    result: dict[str, Any] = {"command": command, "load_start": machine_load()}
    artifact_dir = bench_mlp_artifact(128)
    shapes = [tuple(t.shape) for t in load_artifact(artifact_dir).manifest.tensors]
    result["params"] = int(sum(np.prod(s) for s in shapes))
    ingest, outcomes = measure(plan, artifact_dir, shapes, out)
    result["load_end"] = machine_load()
    result["ingest"] = [
        asdict(r)
        | {
            "updates_per_s": r.updates_per_s,
            "mb_per_s": r.mb_per_s,
            "updates_per_cpu_s": r.updates_per_cpu_s,
        }
        for r in ingest
    ]
    result["rounds"] = [o.to_dict() for o in outcomes]
    path = write_json(out, "ingest.json", result)
    report_sections(out, "ingest.md", sections(result, ingest, outcomes), command)
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
