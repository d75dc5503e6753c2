"""Building fedge's own wheel (full, or device-only for bundles) without touching the checkout."""

from __future__ import annotations

import importlib.util
import json
import re
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
DEVICE_PACKAGE = "fedge.edge_client"
DEVICE_EXTRA = "edge"
DEVICE_SCRIPT = "fedge.edge_client.cli:main"
"""The device wheel's ``fedge`` command: runs ``fedge device`` only (no server, sim or tools)."""
PROJECT_KEYS = (
    "name",
    "version",
    "description",
    "readme",
    "requires-python",
    "license",
    "dependencies",
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _setuptools(pyproject: dict[str, Any]) -> dict[str, Any]:
    table = pyproject.get("tool", {}).get("setuptools", {})
    return table if isinstance(table, dict) else {}


def _package_dirs(source: Path, pyproject: dict[str, Any]) -> list[Path]:
    """Source folders ``[tool.setuptools] package-dir`` maps packages to (``fedge.server`` ->
    ``server``): what the build needs copied."""
    mapping = _setuptools(pyproject).get("package-dir", {})
    folders = sorted({str(f) for f in mapping.values()}) if isinstance(mapping, dict) else []
    if not folders:
        raise ConfigError(
            f"{source}/pyproject.toml maps no package folders ([tool.setuptools] package-dir)"
        )
    missing = [f for f in folders if not (source / f).is_dir()]
    if missing:
        raise ConfigError(f"{source}/pyproject.toml maps packages to missing folders {missing}")
    return [source / f for f in folders]


def _is_device(package: str) -> bool:
    return package == DEVICE_PACKAGE or package.startswith(f"{DEVICE_PACKAGE}.")


def device_pyproject(pyproject: dict[str, Any]) -> dict[str, Any]:
    """The project file of a device-only build of ``pyproject`` (fedge's own, parsed).

    A device installs ``fedge[edge]``: the same name, version and ``edge`` extra, but only the
    ``fedge.edge_client*`` packages and a ``fedge`` command that runs the device agent alone.

    Raises
    ------
    ConfigError
        If ``pyproject`` has no ``edge`` extra or maps no ``fedge.edge_client`` package.
    """
    project = pyproject.get("project", {})
    extras = project.get("optional-dependencies", {})
    if DEVICE_EXTRA not in extras or "version" not in project:
        raise ConfigError(
            "fedge's pyproject.toml needs a static version and an 'edge' extra "
            "to build a device wheel"
        )
    setuptools = _setuptools(pyproject)
    package_dir = {k: v for k, v in setuptools.get("package-dir", {}).items() if _is_device(k)}
    packages = [p for p in setuptools.get("packages", []) if _is_device(p)]
    if DEVICE_PACKAGE not in package_dir or DEVICE_PACKAGE not in packages:
        raise ConfigError(f"fedge's pyproject.toml does not build the {DEVICE_PACKAGE} package")
    device: dict[str, Any] = {k: project[k] for k in PROJECT_KEYS if k in project}
    device["optional-dependencies"] = {DEVICE_EXTRA: extras[DEVICE_EXTRA]}
    device["scripts"] = {"fedge": DEVICE_SCRIPT}
    tool: dict[str, Any] = {"package-dir": package_dir, "packages": packages}
    data = {k: v for k, v in setuptools.get("package-data", {}).items() if _is_device(k)}
    if data:
        tool["package-data"] = data
    config = {"project": device, "tool": {"setuptools": tool}}
    if "build-system" in pyproject:
        config = {"build-system": pyproject["build-system"], **config}
    return config


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_value(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # JSON's escapes are TOML's, except DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise ConfigError(f"cannot write {value!r} into the generated pyproject.toml")


def to_toml(config: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """TOML text that ``tomllib`` parses back into ``config`` (tables as ``[a.b]`` sections).

    Written by hand: the standard library reads TOML but does not write it.
    """
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)
    ]
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    if prefix and (lines or not tables):  # a table holding only tables needs no header
        lines.insert(0, f"[{'.'.join(_toml_key(k) for k in prefix)}]")
    text = "\n".join(lines) + "\n" if lines else ""
    for key, value in tables.items():
        text += ("\n" if text else "") + to_toml(value, (*prefix, key))
    return text


def _read_pyproject(source: Path) -> dict[str, Any]:
    path = source / "pyproject.toml"
    try:
        pyproject = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read {path} (pass --source with a fedge checkout): {exc}"
        ) from exc
    if pyproject.get("project", {}).get("name") != "fedge":
        raise ConfigError(f"{path} is not fedge's project file")
    return pyproject


def _stage(source: Path, staged: Path, pyproject: dict[str, Any], device_only: bool) -> None:
    """Copy what the build reads into ``staged``; a device build gets its generated project."""
    for name in ("README.md", "LICENSE"):
        if (source / name).is_file():
            shutil.copy2(source / name, staged / name)
    if device_only:
        pyproject = device_pyproject(pyproject)
        header = "# Generated by fedge bundle: the device-only build (fedge.edge_client).\n\n"
        (staged / "pyproject.toml").write_text(header + to_toml(pyproject))
    else:
        shutil.copy2(source / "pyproject.toml", staged / "pyproject.toml")
    for package in _package_dirs(source, pyproject):
        shutil.copytree(package, staged / package.relative_to(source), ignore=IGNORED)


def build_fedge_wheel(source: Path, out_dir: Path, *, device_only: bool = False) -> Path:
    """Build ``fedge-*.whl`` (``pip wheel --no-deps``) from the checkout at ``source``.

    The sources are copied to a temporary folder first, so the checkout gets no ``build/``
    or ``*.egg-info`` folders.

    Parameters
    ----------
    source : Path
        Folder holding ``pyproject.toml`` and the packages.
    out_dir : Path
        Where the wheel is written.
    device_only : bool
        Build what a device installs (see :func:`device_pyproject`): only ``fedge.edge_client``,
        with a ``fedge`` command that runs ``fedge device`` alone. Bundles use this.

    Returns
    -------
    Path
        The built wheel.

    Raises
    ------
    ConfigError
        If ``source`` is not a fedge checkout or the build fails.
    """
    pyproject = _read_pyproject(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedge-wheel-") as tmp:
        staged = Path(tmp) / "src"
        staged.mkdir()
        _stage(source, staged, pyproject, device_only)
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(out_dir),
            str(staged),
        ]
        if importlib.util.find_spec("setuptools") is not None:
            command.insert(4, "--no-build-isolation")  # build offline with what is installed
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise ConfigError(
                f"building fedge's wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    wheels = sorted(out_dir.glob("fedge-*.whl"))
    if len(wheels) != 1:
        names = [w.name for w in wheels]
        raise ConfigError(f"expected one fedge wheel in {out_dir}, found {names}")
    return wheels[0]
