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
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil

from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import unpack
from fedge.firmware_sim.fleet import DeviceSpec, Fleet, WorkerArgs
from fedge.firmware_sim.sim import SimConfig, prepare
from fedge.tools.bench._common import (
    Mosquitto,
    Section,
    bench_mlp_artifact,
    command_line,
    machine_load,
    quiet_logs,
    raise_fd_limit,
    report_sections,
    usage,
    write_json,
)
from fedge.tools.bench.ingest import (
    ROUND_COLUMNS,
    SimOutcome,
    outcome_note,
    round_table_rows,
    simulate_rounds,
)

MODULE = "tools.bench.fleet"
SIM_FLEET = "sim"  # the fleet name firmware_sim.sim.prepare writes into device.toml
BROKER_CLIENTS = "$SYS/broker/clients/connected"
MB = 1024 * 1024
SIM_BUDGET_S = 240.0  # wall-time bound of one simulated fleet (10k: prepare alone is ~40 s)
CONNECT_SPREAD_S = 0.004  # per device of a worker: 250 connects/s per worker, at most 30 s


class PresenceWatch:
    """A paho client counting devices whose retained presence says online, and broker clients."""

    def __init__(self, port: int, fleet: str = SIM_FLEET):
        self.port = port
        self.fleet = fleet
        self.online: set[str] = set()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.broker_clients: int | None = None
        self.refused = 0
        self._lock = threading.Lock()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-watch",
                                   protocol=paho.MQTTv311)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        client.subscribe([(topics.server_presence_filter(self.fleet), 1), (BROKER_CLIENTS, 0)])

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.topic == BROKER_CLIENTS:
            self.broker_clients = int(msg.payload) - 1  # minus this watcher
            return
        if not msg.payload:
            return
        try:
            _, device_id, _ = topics.parse_device_topic(msg.topic)
            presence = m.parse(unpack(bytes(msg.payload), device_id, check_time=False))
        except ProtocolError:
            self.refused += 1
            return
        if not isinstance(presence, m.Presence):
            self.refused += 1
            return
        now = time.monotonic()
        with self._lock:
            if presence.online:
                self.online.add(device_id)
                self.first_at = self.first_at or now
                self.last_at = now
            else:
                self.online.discard(device_id)

    def count(self) -> int:
        with self._lock:
            return len(self.online)

    def start(self) -> PresenceWatch:
        self._client.connect("127.0.0.1", self.port, keepalive=60)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass(frozen=True)
class SessionRow:
    """What holding N device sessions cost."""

    devices: int
    workers: int
    connected: int
    broker_clients: int | None
    startup_s: float | None
    connect_s: float | None
    worker_rss_mb: float
    worker_cpu_hold: float
    broker_rss_mb: float
    broker_fds: int
    broker_cpu_connect_s: float
    broker_cpu_hold: float
    stop_s: float
    broker_exit: int | None  # None: Mosquitto was still running at the end of the hold

    @property
    def kb_per_device(self) -> float:
        return self.worker_rss_mb * 1024 / max(self.devices, 1)


def _worker_args(devices: Sequence[DeviceSpec], workers: int, hold_s: float) -> list[WorkerArgs]:
    groups = [tuple(devices[i::workers]) for i in range(workers)]
    return [WorkerArgs(devices=g, seed=0, speedup=1000.0, start_s=0.0, clock_wall0=time.time(),
                       dropout_p=0.0, checkin_timeout_s=hold_s + 600.0,
                       connect_spread_s=min(30.0, CONNECT_SPREAD_S * len(g)),
                       log_level=logging.WARNING)
            for g in groups]


def hold_sessions(devices: Sequence[DeviceSpec], workers: int, broker: Mosquitto, hold_s: float,
                  connect_timeout_s: float) -> SessionRow:
    """Connect ``devices`` as real agents, hold the sessions ``hold_s`` seconds, stop them."""
    n = len(devices)
    watch = PresenceWatch(broker.port).start()
    fleet = Fleet(_worker_args(devices, workers, hold_s))
    try:
        t0 = time.monotonic()
        b0 = usage([broker.pid])
        fleet.start()
        pids = [p.pid for p in fleet.processes if p.pid is not None]
        deadline = t0 + connect_timeout_s
        while watch.count() < n and time.monotonic() < deadline:
            if not any(p.is_alive() for p in fleet.processes):
                break
            time.sleep(0.2)
        b1 = usage([broker.pid])
        connected_at = watch.last_at
        w1 = usage(pids)
        time.sleep(hold_s)
        b2, w2 = usage([broker.pid]), usage(pids)
        broker_exit = broker.exit_code
        broker_fds = psutil.Process(broker.pid).num_fds() if broker_exit is None else 0
        connected = watch.count()
        clients = watch.broker_clients
    finally:
        t_stop = time.monotonic()
        fleet.stop(timeout_s=60.0)
        stop_s = time.monotonic() - t_stop
        watch.stop()
    return SessionRow(
        devices=n, workers=workers, connected=connected, broker_clients=clients,
        startup_s=None if watch.first_at is None else watch.first_at - t0,
        connect_s=None if watch.first_at is None or connected_at is None
        else connected_at - watch.first_at,
        worker_rss_mb=w2.rss_bytes / MB, worker_cpu_hold=w2.cpu_share_since(w1),
        broker_rss_mb=b2.rss_bytes / MB, broker_fds=broker_fds,
        broker_cpu_connect_s=b1.cpu_s - b0.cpu_s, broker_cpu_hold=b2.cpu_share_since(b1),
        stop_s=stop_s, broker_exit=broker_exit)


def fleet_config(fleet: int, selected: int, rounds: int, broker_url: str, out: Path,
                 artifact: Path, workers: int) -> SimConfig:
    """``fleet`` agents, about ``selected`` selected per round (target = selected / 1.3)."""
    target = max(1, math.floor(selected / 1.3))
    return SimConfig(out=out, devices=fleet, rounds=rounds, dataset="fashion-mnist",
                     artifact=artifact, partition="iid", profiles="pi5", availability="always",
                     dropout=0.0, clients_per_round=target, broker=broker_url, speedup=1000.0,
                     round_deadline_s=45.0, workers=workers, progress=False)


SESSION_COLUMNS = ("devices", "connected", "broker clients", "start-up s", "connect s",
                   "workers RSS MB", "kB/device", "workers cores (hold)", "broker RSS MB",
                   "broker fds", "broker CPU s (connect)", "broker cores (hold)", "stop s",
                   "broker exit")


def session_table_rows(rows: Sequence[SessionRow]) -> list[list[object]]:
    return [[r.devices, r.connected, r.broker_clients, _r(r.startup_s), _r(r.connect_s),
             round(r.worker_rss_mb), round(r.kb_per_device, 1), round(r.worker_cpu_hold, 3),
             round(r.broker_rss_mb, 1), r.broker_fds, round(r.broker_cpu_connect_s, 3),
             round(r.broker_cpu_hold, 3), round(r.stop_s, 1),
             "running" if r.broker_exit is None else str(r.broker_exit)] for r in rows]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1k sessions, 100 selected of 1k (about 2 minutes)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results directory")
    p.add_argument("--sessions", default=None, help="session counts (1000,2000,5000,10000)")
    p.add_argument("--fleet", type=int, default=None,
                   help="fleet size for the rounds (2000; 10000 is the project's goal)")
    p.add_argument("--selected", default=None, help="selected per round (100,1000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (the first is excluded)")
    p.add_argument("--workers", type=int, default=2, help="simulator worker processes")
    p.add_argument("--hold", type=float, default=None, help="seconds to hold the sessions (10)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: sessions,rounds")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.workers < 1:
        p.error("--rounds must be >= 2 and --workers >= 1")
    return args


def _ints(text: str | None, default: str) -> list[int]:
    return [int(v) for v in (text or default).split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write ``<out>/fleet.json``."""
    args = parse_args(argv)
    command = command_line(MODULE)
    quiet_logs()
    skip = {s for s in args.skip.split(",") if s}
    sessions = _ints(args.sessions, "1000" if args.quick else "1000,2000,5000,10000")
    selected = _ints(args.selected, "100" if args.quick else "100,1000")
    fleet_size = args.fleet or (1000 if args.quick else 2000)
    hold_s = args.hold if args.hold is not None else (5.0 if args.quick else 10.0)
    if max(selected) > fleet_size:
        raise ConfigError(f"--selected {max(selected)} exceeds --fleet {fleet_size}")
    fd_limit = raise_fd_limit()
    if max(sessions) + 100 > fd_limit:
        raise ConfigError(f"{max(sessions)} sessions need more open files than the limit "
                          f"{fd_limit} (ulimit -Hn)")
    out = args.out.resolve()
    artifact = bench_mlp_artifact(16)
    result: dict[str, Any] = {"command": command, "load_start": machine_load(),
                              "fd_limit": fd_limit}
    session_rows: list[SessionRow] = []
    outcomes: list[SimOutcome] = []
    broker = Mosquitto(out / "fleet-broker")
    if "sessions" not in skip:
        broker.start()
        try:
            plan = prepare(fleet_config(max(sessions), 1, 1, broker.url, out / "fleet-sessions",
                                        artifact, args.workers), broker.url)
            for n in sessions:
                if n != sessions[0]:
                    broker.stop()
                    broker.start()
                session_rows.append(hold_sessions(plan.devices[:n], args.workers, broker, hold_s,
                                                  connect_timeout_s=150.0))
                print(f"sessions: {asdict(session_rows[-1])}", flush=True)
        finally:
            broker.stop()
    if "rounds" not in skip:
        for k in selected:
            broker.start()
            try:
                config = fleet_config(fleet_size, k, args.rounds, broker.url,
                                      out / "fleet-sim" / f"f{fleet_size}-s{k}", artifact,
                                      args.workers)
                outcomes.append(simulate_rounds(config, broker.pid, budget_s=SIM_BUDGET_S))
            finally:
                broker.stop()
            print(f"rounds: {outcomes[-1].to_dict()}", flush=True)
    result["load_end"] = machine_load()
    result["sessions"] = [asdict(r) | {"kb_per_device": r.kb_per_device} for r in session_rows]
    result["rounds"] = [o.to_dict() for o in outcomes]
    path = write_json(out, "fleet.json", result)
    load = f"load average {result['load_start']['loadavg']} -> {result['load_end']['loadavg']}"
    sections: list[Section] = []
    if session_rows:
        sections.append((f"MQTT sessions of real device agents ({args.workers} worker "
                         f"processes), one Mosquitto, held {hold_s:.0f} s", SESSION_COLUMNS,
                         session_table_rows(session_rows), load))
    if outcomes:
        sections.append((f"Round overhead on a fleet of {fleet_size:,} (rounds after the first)",
                         ROUND_COLUMNS, round_table_rows([o.row for o in outcomes if o.row]),
                         outcome_note(outcomes) + f"\n{load}"))
    report_sections(out, "fleet.md", sections, command)
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
