"""Building fedge's own wheel from a source checkout, without touching the checkout."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from fedge.edge_client.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
BUILD_TIMEOUT_S = 600


def _package_dirs(source: Path, pyproject: dict[str, Any]) -> list[Path]:
    """Top-level package folders named by ``[tool.setuptools.packages.find] include`` (namespace
    packages too: ``edge_client`` has no ``__init__.py``)."""
    try:
        patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    except (KeyError, TypeError):
        patterns = []
    names = {str(p).rstrip("*") for p in patterns}
    dirs = [source / name for name in sorted(names) if (source / name).is_dir()]
    if not dirs:
        raise ConfigError(f"{source}/pyproject.toml names no package folders to build")
    return dirs


def build_fedge_wheel(source: Path, out_dir: Path) -> Path:
    """Build ``fedge-*.whl`` (``pip wheel --no-deps``) from the checkout at ``source``.

    The sources are copied to a temporary folder first, so the checkout gets no ``build/``
    or ``*.egg-info`` folders.

    Parameters
    ----------
    source : Path
        Folder holding ``pyproject.toml`` and the packages.
    out_dir : Path
        Where the wheel is written.

    Returns
    -------
    Path
        The built wheel.

    Raises
    ------
    ConfigError
        If ``source`` is not a fedge checkout or the build fails.
    """
    pyproject_file = source / "pyproject.toml"
    try:
        pyproject = tomllib.loads(pyproject_file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {pyproject_file} (pass --source with a fedge "
                          f"checkout): {exc}") from exc
    if pyproject.get("project", {}).get("name") != "fedge":
        raise ConfigError(f"{pyproject_file} is not fedge's project file")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedge-wheel-") as tmp:
        staged = Path(tmp) / "src"
        staged.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source / name).is_file():
                shutil.copy2(source / name, staged / name)
        for package in _package_dirs(source, pyproject):
            shutil.copytree(package, staged / package.name, ignore=IGNORED)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--wheel-dir", str(out_dir), str(staged)]
        if importlib.util.find_spec("setuptools") is not None:
            command.insert(4, "--no-build-isolation")  # build offline with what is installed
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              check=False)
        if done.returncode != 0:
            raise ConfigError(f"building fedge's wheel failed:\n{done.stdout[-2000:]}"
                              f"{done.stderr[-2000:]}")
    wheels = sorted(out_dir.glob("fedge-*.whl"))
    if len(wheels) != 1:
        names = [w.name for w in wheels]
        raise ConfigError(f"expected one fedge wheel in {out_dir}, found {names}")
    return wheels[0]
