"""The bundle's fedge wheel is a device-only build: the edge client and `fedge device`, no more."""

from __future__ import annotations

import configparser
import shutil
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from fedge.edge_client.errors import ConfigError
from fedge.tools.bundle import build_bundle, command
from fedge.tools.bundle.platforms import Platform
from fedge.tools.bundle.source import (
    DEVICE_SCRIPT,
    _package_dirs,
    build_fedge_wheel,
    device_pyproject,
    to_toml,
)
from fedge.tools.bundle.wheels import WheelSet
from fedge.tools.provision import provision_fleet

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEVICE = "dev-0001"


def fake_collect_wheels(requirement: str, platform: Platform, dest: Path, **_: object) -> WheelSet:
    """Stands in for pip: the bundle carries only fedge's own wheel (no index needed)."""
    assert requirement.endswith("[edge]"), requirement
    dest.mkdir(parents=True, exist_ok=True)
    own = shutil.copy2(requirement.removesuffix("[edge]"), dest)
    return WheelSet((Path(own),), ())


@pytest.fixture(scope="module")
def bundled_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The fedge wheel inside a bundle built by `build_bundle` (dependency download stubbed)."""
    root = tmp_path_factory.mktemp("device-wheel")
    fleet = provision_fleet(root / "provisioned", "orchard", 1)
    out = root / f"{DEVICE}.tar.gz"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(command, "collect_wheels", fake_collect_wheels)
        result = build_bundle(DEVICE, fleet.out_dir, "linux_x86_64", out)
    (name,) = [w for w in result.wheels if w.startswith("fedge-")]
    with tarfile.open(out) as tar:
        tar.extract(f"{result.top}/wheels/{name}", root, filter="data")
    yield root / result.top / "wheels" / name


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_bundle_wheel_holds_only_the_edge_client(bundled_wheel: Path) -> None:
    version = PYPROJECT["project"]["version"]
    with zipfile.ZipFile(bundled_wheel) as wheel:
        names = wheel.namelist()
    meta = f"fedge-{version}.dist-info/"
    assert all(n.startswith(("fedge/edge_client/", meta)) for n in names), names
    packages = {n.rsplit("/", 1)[0] for n in names if n.startswith("fedge/")}
    assert packages == {
        "fedge/edge_client",
        "fedge/edge_client/codec",
        "fedge/edge_client/privacy",
        "fedge/edge_client/protocol",
        "fedge/edge_client/secagg",
    }
    for module in ("__init__.py", "cli.py", "device_main.py", "event_loop.py", "agent.py"):
        assert f"fedge/edge_client/{module}" in names, module
    assert {n.removeprefix(meta) for n in names if n.startswith(meta)} >= {"METADATA", "RECORD"}


def test_bundle_wheel_command_is_the_device_cli(bundled_wheel: Path) -> None:
    with zipfile.ZipFile(bundled_wheel) as wheel:
        entry_points = configparser.ConfigParser()
        entry_points.read_string(dist_info(wheel, "entry_points.txt"))
    assert entry_points.sections() == ["console_scripts"]
    assert dict(entry_points["console_scripts"]) == {"fedge": "fedge.edge_client.cli:main"}
    assert DEVICE_SCRIPT == "fedge.edge_client.cli:main"


def test_bundle_wheel_keeps_name_version_and_edge_extra(bundled_wheel: Path) -> None:
    with zipfile.ZipFile(bundled_wheel) as wheel:
        metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    assert metadata["Name"] == "fedge"
    assert metadata["Version"] == PYPROJECT["project"]["version"]
    assert metadata.get_all("Provides-Extra") == ["edge"]
    requires = metadata.get_all("Requires-Dist") or []
    edge = PYPROJECT["project"]["optional-dependencies"]["edge"]
    assert len(requires) == len(edge)
    assert all(r.endswith('extra == "edge"') for r in requires), requires


def test_generated_pyproject_is_device_only_and_parses_back() -> None:
    device = device_pyproject(PYPROJECT)
    assert tomllib.loads(to_toml(device)) == device
    assert device["project"]["name"] == "fedge"
    assert device["project"]["version"] == PYPROJECT["project"]["version"]
    assert device["project"]["optional-dependencies"] == {
        "edge": PYPROJECT["project"]["optional-dependencies"]["edge"]
    }
    assert device["project"]["scripts"] == {"fedge": DEVICE_SCRIPT}
    setuptools = device["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"fedge.edge_client": "edge_client"}
    assert all(p.split(".")[:2] == ["fedge", "edge_client"] for p in setuptools["packages"])


def test_package_dirs_follow_the_package_dir_mapping(tmp_path: Path) -> None:
    folders = {p.name for p in _package_dirs(REPO, PYPROJECT)}
    assert folders == set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert [p.name for p in _package_dirs(REPO, device_pyproject(PYPROJECT))] == ["edge_client"]
    with pytest.raises(ConfigError, match="maps no package folders"):
        _package_dirs(REPO, {"tool": {"setuptools": {"packages": {"find": {}}}}})
    with pytest.raises(ConfigError, match="missing folders"):
        _package_dirs(tmp_path, device_pyproject(PYPROJECT))


def test_device_build_needs_the_edge_extra(tmp_path: Path) -> None:
    project = {k: v for k, v in PYPROJECT["project"].items() if k != "optional-dependencies"}
    (tmp_path / "pyproject.toml").write_text(to_toml({**PYPROJECT, "project": project}))
    with pytest.raises(ConfigError, match="'edge' extra"):
        build_fedge_wheel(tmp_path, tmp_path / "out", device_only=True)
