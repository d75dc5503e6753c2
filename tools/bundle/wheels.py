"""Dependency wheels for one platform: resolved offline from a local cache first, else from PyPI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fedge.edge_client.errors import ConfigError
from fedge.tools.bundle.platforms import IMPLEMENTATION, PYTHON_VERSION, Platform

DOWNLOAD_TIMEOUT_S = 900
_COLLECTING = re.compile(r"^Collecting (\S+)")
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+)(?: \((.+)\))?")
_SAVED = re.compile(r"^(?:Saved |File was already downloaded )(\S+)")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedge/wheels`` (``~/.cache/fedge/wheels`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedge" / "wheels"


@dataclass(frozen=True)
class WheelSet:
    """The wheels a bundle carries and where they came from."""

    wheels: tuple[Path, ...]
    new: tuple[str, ...]
    """File names that were not in the cache before this call (they are now)."""


def _pip_download(platform: Platform, requirement: str, dest: Path, cache: Path,
                  constraints: Path | None, offline: bool) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--progress-bar", "off", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
               "--implementation", IMPLEMENTATION, "--dest", str(dest), "--find-links", str(cache)]
    for tag in platform.wheel_tags:
        command += ["--platform", tag]
    if constraints is not None:
        command += ["--constraint", str(constraints)]
    if offline:
        command.append("--no-index")
    return [*command, requirement]


def _run(command: list[str], progress: Progress, title: str) -> tuple[bool, str]:
    """Run pip, turning its log lines into progress updates; returns (ok, last lines)."""
    task = progress.add_task(title, total=None, detail="")
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(DOWNLOAD_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if match := _COLLECTING.match(line):
                progress.update(task, detail=f"resolving {match.group(1)}")
            elif match := _DOWNLOADING.match(line):
                size = f" ({match.group(2)})" if match.group(2) else ""
                progress.update(task, detail=f"downloading {Path(match.group(1)).name}{size}")
            elif match := _SAVED.match(line):
                progress.advance(task)
                progress.update(task, detail=Path(match.group(1)).name)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    progress.remove_task(task)
    return proc.returncode == 0, "".join(tail)


def collect_wheels(requirement: str, platform: Platform, dest: Path, *, cache_dir: Path,
                   constraints: Path | None = None, refresh: bool = False,
                   console: Console | None = None) -> WheelSet:
    """Download ``requirement`` and all its dependencies as wheels for ``platform``.

    Resolution runs offline against ``cache_dir/<platform>`` first; only when the cache cannot
    satisfy it (or ``refresh``) does pip ask the index. New wheels are added to the cache.

    Parameters
    ----------
    requirement : str
        What to resolve, e.g. ``/path/fedge-0.1.0-py3-none-any.whl[edge]``.
    platform : Platform
        Target machine (wheel tags, CPython 3.11).
    dest : Path
        Empty folder the wheels are written to.
    cache_dir : Path
        Root of the wheel cache.
    constraints : Path, optional
        pip constraints file pinning versions (the repository's ``constraints.txt``).
    refresh : bool
        Skip the offline attempt and resolve against the index.
    console : Console, optional
        Where progress is shown (stderr by default).

    Returns
    -------
    WheelSet
        Every wheel in ``dest`` and which of them were new to the cache.

    Raises
    ------
    ConfigError
        If pip cannot find wheels for the platform (pip's last lines are in the message).
    """
    console = console or Console(stderr=True)
    cache = cache_dir / platform.name
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"),
               TextColumn("{task.completed} wheels"), TextColumn("{task.fields[detail]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        ok = False
        if not refresh:
            command = _pip_download(platform, requirement, dest, cache, constraints, offline=True)
            ok, _ = _run(command, progress, f"{platform.name}: wheel cache")
        if not ok:
            for stale in dest.glob("*.whl"):
                stale.unlink()
            command = _pip_download(platform, requirement, dest, cache, constraints, offline=False)
            ok, log = _run(command, progress, f"{platform.name}: downloading")
            if not ok:
                raise ConfigError(f"pip could not get wheels of {requirement} for {platform.name} "
                                  f"(CPython {PYTHON_VERSION}, tags {platform.wheel_tags[0]}...):"
                                  f"\n{log}")
    wheels = tuple(sorted(dest.glob("*.whl")))
    new = []
    for wheel in wheels:
        if wheel.name.startswith("fedge-"):
            continue  # rebuilt from source every time: caching it would serve stale code
        if not (cache / wheel.name).exists():
            new.append(wheel.name)
            shutil.copy2(wheel, cache / wheel.name)
    return WheelSet(wheels, tuple(new))
