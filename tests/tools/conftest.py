"""Fixtures for tools tests: free loopback ports and real Mosquitto processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    waited = f"{START_TIMEOUT_S}s"
    raise RuntimeError(f"mosquitto not listening on {port} after {waited}:\n{log.read_text()}")


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Returns a function giving a TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port


StartMosquitto = Callable[[Path, int], subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def start_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartMosquitto]:
    """Start ``mosquitto -c CONF`` (listening on ``port``); every process stops at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(conf: Path, port: int) -> subprocess.Popen[bytes]:
        log = tmp_path_factory.mktemp("mosquitto") / "stderr.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=sink, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        _wait_listening(proc, port, log)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
