"""Worker processes that each run many real device agents in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from fedge.edge_client import event_loop
from fedge.edge_client.agent import TrainerCache
from fedge.edge_client.config import load_device_config
from fedge.edge_client.device_main import build_agent
from fedge.firmware_sim.availability import Availability, pattern_availability
from fedge.firmware_sim.clock import ScaledClock
from fedge.firmware_sim.hooks import SimHooks
from fedge.firmware_sim.profiles import get_profile

log = logging.getLogger("fedge.sim")


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its folder (with device.toml and data) and its behaviour."""

    index: int
    folder: str
    profile: str
    availability: str | None  # a pattern name; None means the profile's own pattern
    trace: tuple[tuple[float, float], ...] | None = None
    trace_period_s: float | None = None


@dataclass(frozen=True)
class WorkerArgs:
    """What one worker process needs."""

    devices: tuple[DeviceSpec, ...]
    seed: int
    speedup: float
    start_s: float
    clock_wall0: float
    dropout_p: float | None
    checkin_timeout_s: float
    connect_spread_s: float
    log_level: int
    away_after_dropout_s: float = 30.0


def _availability(spec: DeviceSpec, seed: int) -> Availability:
    if spec.trace is not None:
        return Availability.from_intervals(spec.trace, spec.trace_period_s)
    pattern = spec.availability or get_profile(spec.profile).availability
    return pattern_availability(pattern, (seed, spec.index))


def _quiet_disconnect_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Sessions torn down at shutdown leave aiomqtt futures failed with MqttError: expected."""
    if isinstance(context.get("exception"), aiomqtt.MqttError):
        return
    event_loop.report_loop_error(loop, context)


async def _run_devices(args: WorkerArgs, stop_flag: Any) -> dict[str, dict[str, Any]]:
    asyncio.get_running_loop().set_exception_handler(_quiet_disconnect_errors)
    # every worker's clock counts from the same wall instant, so all agree on the time of day
    clock = ScaledClock(
        args.speedup, start_s=args.start_s + (time.time() - args.clock_wall0) * args.speedup
    )
    trainers = TrainerCache()
    stop = asyncio.Event()
    agents = []
    for spec in args.devices:
        config = load_device_config(Path(spec.folder) / "device.toml")
        hooks = SimHooks(
            get_profile(spec.profile),
            _availability(spec, args.seed),
            clock,
            np.random.default_rng((args.seed, spec.index, 7)),
            args.dropout_p,
            away_after_dropout_s=args.away_after_dropout_s,
        )
        agents.append(
            build_agent(
                config,
                hooks=hooks,
                trainers=trainers,
                checkin_timeout_s=args.checkin_timeout_s,
                seed=args.seed * 1_000_003 + spec.index,
            )
        )
    tasks = []
    spread = args.connect_spread_s / max(len(agents), 1)
    for agent in agents:
        tasks.append(asyncio.create_task(agent.run(stop)))
        await asyncio.sleep(spread)  # no connection storm against the broker
    while not stop_flag.is_set():
        await asyncio.sleep(0.2)
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*pending, return_exceptions=True)
    return {
        a.config.device_id: {
            "profile": a.config.profile,
            "rounds_reported": a.rounds_reported,
            "uplink_bytes": a.uplink_bytes,
            "dropouts": a.hooks.dropouts,  # type: ignore[attr-defined]
            "sim_compute_s": a.hooks.sim_compute_s,  # type: ignore[attr-defined]
            "sim_upload_s": a.hooks.sim_transfer_s["up"],  # type: ignore[attr-defined]
        }
        for a in agents
    }


def worker_main(args: WorkerArgs, stop_flag: Any, results: Any) -> None:
    """Process entry point: run the agents until ``stop_flag`` is set; put per-device stats."""
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stats = event_loop.run(_run_devices(args, stop_flag))
    results.put(json.dumps(stats))


class Fleet:
    """Starts and stops the worker processes of a simulated fleet."""

    def __init__(self, worker_args: list[WorkerArgs]):
        self._ctx = mp.get_context("spawn")  # the parent runs threads (broker, HTTP): never fork
        self.stop_flag = self._ctx.Event()
        self.results = self._ctx.Queue()
        self.processes = [
            self._ctx.Process(
                target=worker_main,
                args=(wa, self.stop_flag, self.results),
                daemon=True,
                name=f"fedge-sim-worker-{i}",
            )
            for i, wa in enumerate(worker_args)
        ]

    def start(self) -> None:
        for proc in self.processes:
            proc.start()

    def stop(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """Stop the workers and collect each device's stats."""
        self.stop_flag.set()
        stats: dict[str, dict[str, Any]] = {}
        for _ in self.processes:
            try:
                stats.update(json.loads(self.results.get(timeout=timeout_s)))
            except Exception:  # a worker died: its devices have no stats
                log.warning("a simulator worker returned no stats")
        for proc in self.processes:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        return stats
