"""Test helpers shared by the suites: real Mosquitto processes, loop threads, servers, device fleets."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.agent import AgentHooks, DeviceAgent, LocalData, TrainerCache
from fedge.edge_client.config import DeviceConfig, parse_device_config
from fedge.edge_client.signing import load_public_key

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoProcess:
    """A real Mosquitto on a free loopback port, restartable on the same port."""

    def __init__(self, workdir: Path, extra: str = ""):
        self.workdir = workdir
        self.port = free_tcp_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            "persistence false\nmax_queued_messages 100000\nmax_inflight_messages 1000\n"
            "max_queued_bytes 0\nset_tcp_nodelay true\n" + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class LoopThread:
    """An asyncio loop in a daemon thread, for running servers or agents beside the test."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.submit(wrapper()).result(timeout=30)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.thread.is_alive():
            try:
                self.submit(cancel_all()).result(timeout=10)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


def device_configs(
    root: Path,
    n: int,
    broker_url: str,
    key_pub: Path,
    shards: list[tuple[np.ndarray, np.ndarray]],
    fleet: str = "test",
) -> list[DeviceConfig]:
    """Write each device's shard and build its config (as device.toml would)."""
    from fedge.edge_client.data import save_npz_dataset

    configs = []
    for i in range(n):
        folder = root / f"dev-{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_npz_dataset(folder / "train.npz", *shards[i])
        raw = {
            "device": {"id": f"dev-{i:03d}", "fleet": fleet, "state_dir": "state"},
            "broker": {"url": broker_url},
            "data": {"train": "train.npz"},
            "server": {"signing_public_key": str(key_pub)},
        }
        configs.append(parse_device_config(raw, folder))
    return configs


@dataclass
class DeviceFleet:
    """Real device agents running in one background loop."""

    configs: list[DeviceConfig]
    key_pub: Path
    hooks: Callable[[int], AgentHooks] | None = None
    checkin_timeout_s: float = 20.0
    agents: list[DeviceAgent] = field(default_factory=list)
    _loop: LoopThread | None = None
    _stops: list[asyncio.Event] = field(default_factory=list)
    _futures: list[Any] = field(default_factory=list)

    def start(self) -> None:
        from fedge.edge_client.data import load_local_dataset

        self._loop = LoopThread("devices")
        key = load_public_key(self.key_pub.read_bytes())
        trainers = TrainerCache()

        def build() -> None:
            for i, cfg in enumerate(self.configs):
                x, y = load_local_dataset(cfg.data.train)
                hooks = self.hooks(i) if self.hooks else None
                agent = DeviceAgent(
                    cfg,
                    LocalData(x, y),
                    key,
                    hooks=hooks,
                    trainers=trainers,
                    checkin_timeout_s=self.checkin_timeout_s,
                    seed=i,
                )
                self.agents.append(agent)

        self._loop.call(build)
        for i in range(len(self.agents)):
            self.start_agent(i)

    def start_agent(self, i: int) -> None:
        assert self._loop is not None

        async def make_stop() -> asyncio.Event:
            return asyncio.Event()

        stop = self._loop.submit(make_stop()).result()
        if i < len(self._stops):
            self._stops[i] = stop
            self._futures[i] = self._loop.submit(self.agents[i].run(stop))
        else:
            self._stops.append(stop)
            self._futures.append(self._loop.submit(self.agents[i].run(stop)))

    def stop_agent(self, i: int) -> None:
        assert self._loop is not None
        self._loop.loop.call_soon_threadsafe(self._stops[i].set)
        try:
            self._futures[i].result(timeout=30)
        except Exception:
            pass

    def stop(self) -> None:
        if self._loop is None:
            return
        for stop in self._stops:
            self._loop.loop.call_soon_threadsafe(stop.set)
        for fut in self._futures:
            try:
                fut.result(timeout=30)
            except Exception:
                pass
        self._loop.close()


@dataclass
class ServerThread:
    """A real FedgeServer running in a background loop."""

    server: Any
    loop: LoopThread
    future: Any
    stop_event: asyncio.Event

    def wait(self, timeout_s: float) -> str:
        return str(self.future.result(timeout=timeout_s))

    def stop(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.stop_event.set)
        try:
            self.future.result(timeout=30)
        finally:
            self.loop.close()


def start_server(job: Any, settings: Any) -> ServerThread:
    from fedge.server.app import FedgeServer

    loop = LoopThread("server")
    server = FedgeServer(job, settings)

    async def make() -> asyncio.Event:
        return asyncio.Event()

    stop = loop.submit(make()).result()
    fut = loop.submit(server.run(stop))
    deadline = time.monotonic() + 30
    while not server.ready.is_set():
        if fut.done():
            fut.result()
        if time.monotonic() > deadline:
            raise RuntimeError("server did not become ready")
        time.sleep(0.05)
    return ServerThread(server, loop, fut, stop)


def iid_shards(
    x: np.ndarray, y: np.ndarray, n: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(len(y))
    return [(x[idx], y[idx]) for idx in np.array_split(order, n)]
