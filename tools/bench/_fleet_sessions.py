"""Device sessions one Mosquitto holds: real agents connect, hold their sessions, stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as paho
import psutil

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import unpack
from fedge.firmware_sim.fleet import DeviceSpec, Fleet, WorkerArgs
from fedge.tools.bench._common import Mosquitto, round_or_none, usage

SIM_FLEET = "sim"  # the fleet name firmware_sim.sim.prepare writes into device.toml
BROKER_CLIENTS = "$SYS/broker/clients/connected"
MB = 1024 * 1024
CONNECT_SPREAD_S = 0.004  # per device of a worker: 250 connects/s per worker, at most 30 s
SESSION_COLUMNS = (
    "devices",
    "connected",
    "broker clients",
    "start-up s",
    "connect s",
    "workers RSS MB",
    "kB/device",
    "workers cores (hold)",
    "broker RSS MB",
    "broker fds",
    "broker CPU s (connect)",
    "broker cores (hold)",
    "stop s",
    "broker exit",
)


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
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="bench-watch", protocol=paho.MQTTv311
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason: object,
        properties: object,
    ) -> None:
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
    return [
        WorkerArgs(
            devices=g,
            seed=0,
            speedup=1000.0,
            start_s=0.0,
            clock_wall0=time.time(),
            dropout_p=0.0,
            checkin_timeout_s=hold_s + 600.0,
            connect_spread_s=min(30.0, CONNECT_SPREAD_S * len(g)),
            log_level=logging.WARNING,
        )
        for g in groups
    ]


def hold_sessions(
    devices: Sequence[DeviceSpec],
    workers: int,
    broker: Mosquitto,
    hold_s: float,
    connect_timeout_s: float,
) -> SessionRow:
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
        devices=n,
        workers=workers,
        connected=connected,
        broker_clients=clients,
        startup_s=None if watch.first_at is None else watch.first_at - t0,
        connect_s=None
        if watch.first_at is None or connected_at is None
        else connected_at - watch.first_at,
        worker_rss_mb=w2.rss_bytes / MB,
        worker_cpu_hold=w2.cpu_share_since(w1),
        broker_rss_mb=b2.rss_bytes / MB,
        broker_fds=broker_fds,
        broker_cpu_connect_s=b1.cpu_s - b0.cpu_s,
        broker_cpu_hold=b2.cpu_share_since(b1),
        stop_s=stop_s,
        broker_exit=broker_exit,
    )


def session_table_rows(rows: Sequence[SessionRow]) -> list[list[object]]:
    """Cells of the sessions table, in :data:`SESSION_COLUMNS` order."""
    return [
        [
            r.devices,
            r.connected,
            r.broker_clients,
            round_or_none(r.startup_s, 2),
            round_or_none(r.connect_s, 2),
            round(r.worker_rss_mb),
            round(r.kb_per_device, 1),
            round(r.worker_cpu_hold, 3),
            round(r.broker_rss_mb, 1),
            r.broker_fds,
            round(r.broker_cpu_connect_s, 3),
            round(r.broker_cpu_hold, 3),
            round(r.stop_s, 1),
            "running" if r.broker_exit is None else str(r.broker_exit),
        ]
        for r in rows
    ]
