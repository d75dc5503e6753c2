"""Shared benchmark helpers: a Mosquitto process, resource probes, the bench model, tables, JSON."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from rich.console import Console
from rich.table import Table

from fedge.edge_client.codec import parse_spec
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.protocol.envelope import PROTOCOL_VERSION

if TYPE_CHECKING:
    from fedge.firmware_sim.sim import SimConfig

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
Section = tuple[str, Sequence[str], Sequence[Sequence[object]], str]  # title, columns, rows, note
BENCH_FLEET = "bench"


@dataclass(frozen=True)
class FleetSetting:
    """The federated setting every row of an accuracy benchmark shares (simulated fleet)."""

    devices: int = 100
    rounds: int = 20
    clients_per_round: int = 20
    local_epochs: int = 2
    lr: float = 0.1
    seed: int = 0
    partition: str = "dirichlet:0.5"
    round_deadline_s: float = 300.0


QUICK_FLEET: dict[str, Any] = {
    "devices": 10,
    "rounds": 2,
    "clients_per_round": 5,
    "local_epochs": 1,
}  # the --quick smoke runs


def run_or_reuse(cfg: SimConfig, reuse: bool) -> dict[str, Any]:
    """Simulate ``cfg``, or with ``reuse`` return a finished run with the identical config
    (and wire protocol, which its byte counts depend on)."""
    from fedge.firmware_sim.sim import run_sim

    done = cfg.out / "summary.json"
    if reuse and done.exists():
        old = json.loads(done.read_text())
        if (
            old.get("config") == cfg.to_dict()
            and old.get("status") == "finished"
            and old.get("protocol") == PROTOCOL_VERSION
        ):
            logging.getLogger("fedge.bench").warning("reusing %s", done)
            return dict(old)
    return run_sim(cfg)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run (``python -m <module> <args>``); ``argv`` when a
    benchmark's ``main`` was given its arguments, else this process's own."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def int_list(text: str | None, default: str) -> list[int]:
    """Comma-separated integers of an option (``default`` when it was not given)."""
    return [int(v) for v in (text or default).split(",") if v.strip()]


def codec_specs(text: str | None, default: Sequence[str]) -> list[str]:
    """Comma-separated codec specs of an option, each checked (``default`` when not given)."""
    specs = default if text is None else [t.strip() for t in text.split(",") if t.strip()]
    for spec in specs:
        parse_spec(spec)  # CodecError naming the bad token
    return list(specs)


def round_or_none(value: float | None, digits: int) -> float | None:
    """A table cell that may be missing ("-" once formatted)."""
    return None if value is None else round(value, digits)


def machine_load() -> dict[str, Any]:
    """Load averages (1, 5, 15 min) and core count, to judge how idle the machine was."""
    one, five, fifteen = os.getloadavg()
    return {
        "loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def load_range(result: dict[str, Any]) -> str:
    """The machine load over a run, from a result's ``load_start`` and ``load_end``."""
    return f"load average {result['load_start']['loadavg']} -> {result['load_end']['loadavg']}"


def quiet_logs() -> None:
    """Warnings only; silence aiomqtt's "pending publish calls" and the server's refusals of
    late reports (expected under over-selection; the benchmarks check outcomes themselves)."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    logging.getLogger("fedge.server").setLevel(logging.ERROR)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    command: str,
    note: str | None = None,
) -> None:
    """Print a rich table, an optional note and the command that produced it."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        text = bool(rows) and isinstance(rows[0][i], str)
        table.add_column(col, justify="left" if text else "right")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console = Console(width=max(160, Console().width))
    console.print(table)
    if note:
        console.print(note, soft_wrap=True)
    console.print(f"command: {command}", soft_wrap=True)


def fmt(value: object) -> str:
    """Cell text: floats as integers from 100, one decimal from 1, three significant digits below."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table as Markdown (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(out_dir: Path, name: str, sections: Sequence[Section], command: str) -> Path:
    """Write (title, columns, rows, note) sections and the command as Markdown; return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for title, columns, rows, note in sections:
        parts.append(f"**{title}**\n\n{markdown_table(columns, rows)}\n\n{note}\n")
    parts.append(f"Command: `{command}`\n")
    path = out_dir / name
    path.write_text("\n".join(parts))
    return path


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``out_dir/name`` (pretty JSON) and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; return the new soft limit.

    Children (Mosquitto, simulator workers) inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """A real Mosquitto on a free loopback port, configured for benchmarks (no limits that drop).

    ``stop()`` then ``start()`` restarts it on the same port with no sessions left.
    """

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            "persistence false\nmax_connections -1\nmax_queued_messages 100000\n"
            "max_inflight_messages 1000\nmax_queued_bytes 0\nset_tcp_nodelay true\nsys_interval 1\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\nlog_type error\nlog_type warning\n"
            "log_type notice\nconnection_messages false\nlog_timestamp_format %H:%M:%S\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or before it started); its exit status once it has exited."""
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ConfigError("mosquitto is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        """Start it and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"mosquitto exited with {self.proc.returncode}; see {self.conf}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"mosquitto did not accept connections within {timeout_s} s")

    def stop(self) -> None:
        """Terminate it (and wait)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) and resident memory of a set of processes at one instant."""

    at: float
    cpu_s: float
    rss_bytes: int

    def cpu_share_since(self, earlier: Usage) -> float:
        """Cores used on average between ``earlier`` and this sample (1.0 = one full core)."""
        wall = self.at - earlier.at
        return (self.cpu_s - earlier.cpu_s) / wall if wall > 0 else 0.0


def usage(pids: Sequence[int]) -> Usage:
    """Sum CPU time and RSS over ``pids`` (processes that have exited count as zero)."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            cpu += times.user + times.system
            rss += proc.memory_info().rss
        except psutil.Error:
            continue
    return Usage(time.monotonic(), cpu, rss)


def artifact_cache() -> Path:
    """Where exported bench artifacts are kept between runs (beside the simulator's)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "fedge" / "artifacts"


class CpuSampler:
    """Samples cumulative CPU seconds of process groups in a thread, to split a window's CPU.

    ``groups()`` names the pids of each group at each sample (processes may come and go); a
    process that has exited keeps the last CPU time seen, so each group's total never drops.
    """

    def __init__(self, groups: Callable[[], dict[str, list[int]]], period_s: float = 0.1):
        self._groups = groups
        self._period_s = period_s
        self._seen: dict[str, dict[int, float]] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        totals: dict[str, float] = {}
        for name, pids in self._groups().items():
            seen = self._seen.setdefault(name, {})
            for pid in pids:
                try:
                    t = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                seen[pid] = max(seen.get(pid, 0.0), t.user + t.system)
            totals[name] = sum(seen.values())
        self.samples.append((time.time(), totals))

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self._sample()

    def start(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per group from the last sample at or before ``t0`` to the first at or
        after ``t1`` (wall-clock ``time.time()`` instants)."""
        before = [s for s in self.samples if s[0] <= t0] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= t1] or self.samples[-1:]
        if not before or not after:
            raise ConfigError("no CPU samples were taken")
        a, b = before[-1][1], after[0][1]
        return {name: b.get(name, 0.0) - a.get(name, 0.0) for name in b}


def bench_mlp_artifact(hidden: int, cache_dir: Path | None = None) -> Path:
    """Export (once, cached) a Flatten-Dense(hidden)-ReLU-Dense(10) MLP on 28x28x1 inputs.

    ``hidden=128`` is the 784-128-10 MLP of 101,770 parameters used by the ingest benchmark.
    Imports TensorFlow (through ``model_export``) only when the artifact is not cached yet.
    """
    target = (cache_dir or artifact_cache()) / f"bench-mlp784-{hidden}-b32-s0"
    if (target / "manifest.json").exists():
        return target
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedge.model_export import ModelSpec, export_spec
    from fedge.model_export import layers as L

    spec = ModelSpec(
        f"bench-mlp784-{hidden}",
        (28, 28, 1),
        10,
        (L.Flatten(), L.Dense(hidden), L.ReLU(), L.Dense(10)),
    )
    export_spec(spec, target, batch_size=32, seed=0)
    return target


def report_sections(out: Any, name: str, sections: Any, command: str) -> None:
    """Print every (title, columns, rows, note) section as a table and write them as Markdown."""
    for title, columns, rows, note in sections:
        print_table(title, columns, rows, command, note)
    write_markdown(out, name, sections, command)
