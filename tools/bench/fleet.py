"""Fleet-scale benchmark: device sessions one Mosquitto holds here, and round overhead per device.

Run ``python -m tools.bench.fleet [--quick] [--out DIR]``.

1. Sessions: N = 1k, 2k, 5k, 10k real ``DeviceAgent``s (the simulator's worker processes,
   ``firmware_sim.fleet.Fleet``, 2 workers, each starting its agents 4 ms apart, at most 30 s
   in all) connect to a fresh Mosquitto. Each agent opens its MQTT session (clean_session
   false, last will, subscriptions to its down topic and the fleet broadcast), publishes its retained presence and sends one check-in. No server runs in this
   part, so check-ins stay unanswered (the agents' check-in timeout is longer than the hold).
   A watcher client counts the online presences; the broker's ``$SYS`` connected-client
   count confirms them. Then the fleet holds its sessions for a while (keepalives only) and
   stops. Reported: start-up (spawn + building agents, until the first presence), connect
   window (first to last presence), worker and broker memory (RSS) and CPU (cores, psutil).
2. Round overhead at 100 and 1,000 selected per round on a 2k fleet (``--fleet 10000`` for the
   project's goal; see docs/benchmarks.md for how that fares here): ``run_sim`` in a child
   process, real server and real agents on Mosquitto, Fashion-MNIST IID (24 training
   examples per device at 2k, one step), a 784-16-10 MLP (12,730 parameters), profile pi5 at ``--speedup 1000``
   (no simulated sleeps), no dropouts, 1.3x over-selection (the server's default: the round
   closes when the target, selected / 1.3, has reported). Round 1 (fleet start-up) is
   excluded. ``(round wall - slowest training) / selected`` is the overhead per device; CPU
   per selected device is split into server, simulated devices and broker.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.sim import SimConfig, prepare
from fedge.tools.bench._common import (
    Mosquitto,
    Section,
    bench_mlp_artifact,
    command_line,
    int_list,
    load_range,
    machine_load,
    quiet_logs,
    raise_fd_limit,
    report_sections,
    write_json,
)
from fedge.tools.bench._fleet_sessions import (
    SESSION_COLUMNS,
    SessionRow,
    hold_sessions,
    session_table_rows,
)
from fedge.tools.bench._round_overhead import SimOutcome, round_section, simulate_rounds

MODULE = "tools.bench.fleet"
SIM_BUDGET_S = 240.0  # wall-time bound of one simulated fleet (10k: prepare alone is ~40 s)


def fleet_config(
    fleet: int, selected: int, rounds: int, broker_url: str, out: Path, artifact: Path, workers: int
) -> SimConfig:
    """``fleet`` agents, about ``selected`` selected per round (target = selected / 1.3)."""
    target = max(1, math.floor(selected / 1.3))
    return SimConfig(
        out=out,
        devices=fleet,
        rounds=rounds,
        dataset="fashion-mnist",
        artifact=artifact,
        partition="iid",
        profiles="pi5",
        availability="always",
        dropout=0.0,
        clients_per_round=target,
        broker=broker_url,
        speedup=1000.0,
        round_deadline_s=45.0,
        workers=workers,
        progress=False,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="1k sessions, 100 selected of 1k (about 2 minutes)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results directory")
    p.add_argument("--sessions", default=None, help="session counts (1000,2000,5000,10000)")
    p.add_argument(
        "--fleet",
        type=int,
        default=None,
        help="fleet size for the rounds (2000; 10000 is the project's goal)",
    )
    p.add_argument("--selected", default=None, help="selected per round (100,1000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (the first is excluded)")
    p.add_argument("--workers", type=int, default=2, help="simulator worker processes")
    p.add_argument("--hold", type=float, default=None, help="seconds to hold the sessions (10)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: sessions,rounds")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.workers < 1:
        p.error("--rounds must be >= 2 and --workers >= 1")
    return args


def run_sessions(
    sessions: Sequence[int],
    broker: Mosquitto,
    out: Path,
    artifact: Path,
    workers: int,
    hold_s: float,
) -> list[SessionRow]:
    """Hold each count of sessions on a freshly started broker (one device set for all)."""
    rows: list[SessionRow] = []
    broker.start()
    try:
        plan = prepare(
            fleet_config(
                max(sessions), 1, 1, broker.url, out / "fleet-sessions", artifact, workers
            ),
            broker.url,
        )
        for n in sessions:
            if n != sessions[0]:
                broker.stop()
                broker.start()
            rows.append(
                hold_sessions(plan.devices[:n], workers, broker, hold_s, connect_timeout_s=150.0)
            )
            print(f"sessions: {asdict(rows[-1])}", flush=True)
    finally:
        broker.stop()
    return rows


def run_rounds(
    selected: Sequence[int],
    fleet_size: int,
    rounds: int,
    broker: Mosquitto,
    out: Path,
    artifact: Path,
    workers: int,
) -> list[SimOutcome]:
    """One simulated fleet per selected count, each on a freshly started broker."""
    outcomes: list[SimOutcome] = []
    for k in selected:
        broker.start()
        try:
            config = fleet_config(
                fleet_size,
                k,
                rounds,
                broker.url,
                out / "fleet-sim" / f"f{fleet_size}-s{k}",
                artifact,
                workers,
            )
            outcomes.append(simulate_rounds(config, broker.pid, budget_s=SIM_BUDGET_S))
        finally:
            broker.stop()
        print(f"rounds: {outcomes[-1].to_dict()}", flush=True)
    return outcomes


def sections(
    result: dict[str, Any],
    session_rows: Sequence[SessionRow],
    outcomes: Sequence[SimOutcome],
    workers: int,
    hold_s: float,
    fleet_size: int,
) -> list[Section]:
    """The tables of the parts that ran, each with its note and the machine load."""
    load = load_range(result)
    out: list[Section] = []
    if session_rows:
        out.append(
            (
                f"MQTT sessions of real device agents ({workers} worker "
                f"processes), one Mosquitto, held {hold_s:.0f} s",
                SESSION_COLUMNS,
                session_table_rows(session_rows),
                load,
            )
        )
    if outcomes:
        title = f"Round overhead on a fleet of {fleet_size:,} (rounds after the first)"
        out.append(round_section(title, outcomes, load))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write ``<out>/fleet.json``."""
    args = parse_args(argv)
    command = command_line(MODULE)
    quiet_logs()
    skip = {s for s in args.skip.split(",") if s}
    sessions = int_list(args.sessions, "1000" if args.quick else "1000,2000,5000,10000")
    selected = int_list(args.selected, "100" if args.quick else "100,1000")
    fleet_size = args.fleet or (1000 if args.quick else 2000)
    hold_s = args.hold if args.hold is not None else (5.0 if args.quick else 10.0)
    if max(selected) > fleet_size:
        raise ConfigError(f"--selected {max(selected)} exceeds --fleet {fleet_size}")
    fd_limit = raise_fd_limit()
    if max(sessions) + 100 > fd_limit:
        raise ConfigError(
            f"{max(sessions)} sessions need more open files than the limit {fd_limit} (ulimit -Hn)"
        )
    out = args.out.resolve()
    artifact = bench_mlp_artifact(16)
    result: dict[str, Any] = {
        "command": command,
        "load_start": machine_load(),
        "fd_limit": fd_limit,
    }
    broker = Mosquitto(out / "fleet-broker")
    session_rows: list[SessionRow] = []
    outcomes: list[SimOutcome] = []
    if "sessions" not in skip:
        session_rows = run_sessions(sessions, broker, out, artifact, args.workers, hold_s)
    if "rounds" not in skip:
        outcomes = run_rounds(
            selected, fleet_size, args.rounds, broker, out, artifact, args.workers
        )
    result["load_end"] = machine_load()
    result["sessions"] = [asdict(r) | {"kb_per_device": r.kb_per_device} for r in session_rows]
    result["rounds"] = [o.to_dict() for o in outcomes]
    path = write_json(out, "fleet.json", result)
    tables = sections(result, session_rows, outcomes, args.workers, hold_s, fleet_size)
    report_sections(out, "fleet.md", tables, command)
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
