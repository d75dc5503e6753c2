"""`fedge bundle`: one device's flashable tar.gz (wheels, config, keys, service, install.sh)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedge.edge_client.errors import FedgeError
from fedge.tools.bundle.archive import Entry, checksums, write_tar_gz
from fedge.tools.bundle.device import read_device_folder
from fedge.tools.bundle.platforms import PLATFORMS, PYTHON_VERSION, Platform, get_platform
from fedge.tools.bundle.source import REPO_ROOT, build_fedge_wheel
from fedge.tools.bundle.templates import UNIT_NAME, render_install_script, render_unit
from fedge.tools.bundle.wheels import collect_wheels, default_cache_dir

BUNDLE_FORMAT = 1
EXECUTABLE_MODE = 0o755
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class BundleResult:
    """What :func:`build_bundle` wrote."""

    path: Path
    top: str
    """The archive's single top-level folder (holds ``install.sh``)."""
    device_id: str
    fleet: str
    platform: str
    wheels: tuple[str, ...]
    new_wheels: tuple[str, ...]
    """Wheels that were not in the cache yet (downloaded by this call)."""


def build_bundle(
    device_id: str,
    provisioned: Path,
    platform: str,
    out: Path,
    *,
    source: Path = REPO_ROOT,
    cache_dir: Path | None = None,
    use_constraints: bool = True,
    refresh: bool = False,
    console: Console | None = None,
) -> BundleResult:
    """Build the flashable bundle of one provisioned device.

    Parameters
    ----------
    device_id : str
        Device to bundle (a folder under ``provisioned/devices``).
    provisioned : Path
        Directory written by ``fedge provision``.
    platform : str
        ``linux_aarch64`` (64-bit Raspberry Pi OS) or ``linux_x86_64``.
    out : Path
        The ``.tar.gz`` to write (mode 0600: it holds the device's private keys).
    source : Path
        fedge checkout the device's fedge wheel is built from.
    cache_dir : Path, optional
        Wheel cache root (default ``~/.cache/fedge/wheels``).
    use_constraints : bool
        Pin dependency versions with ``source/constraints.txt`` when it exists.
    refresh : bool
        Resolve against the index even if the cache could satisfy the requirements.
    console : Console, optional
        Where progress and the summary go (stderr by default).

    Returns
    -------
    BundleResult

    Raises
    ------
    ConfigError
        Unknown platform or device, missing provisioned directory, or no wheels found.
    """
    target = get_platform(platform)
    device = read_device_folder(provisioned, device_id)
    console = console or Console(stderr=True)
    pins = source / "constraints.txt"
    constraints = pins if use_constraints and pins.is_file() else None
    with tempfile.TemporaryDirectory(prefix="fedge-bundle-") as tmp:
        own_wheel = build_fedge_wheel(source, Path(tmp) / "fedge", device_only=True)
        wheel_set = collect_wheels(
            f"{own_wheel}[edge]",
            target,
            Path(tmp) / "wheels",
            cache_dir=cache_dir or default_cache_dir(),
            constraints=constraints,
            refresh=refresh,
            console=console,
        )
        fleet = device.config.fleet
        metadata = _bundle_json(device_id, fleet, target, own_wheel, wheel_set.wheels)
        entries = [
            Entry(
                "install.sh",
                EXECUTABLE_MODE,
                render_install_script(device_id, fleet, target).encode(),
            ),
            Entry(UNIT_NAME, PUBLIC_MODE, render_unit(device_id, fleet, target).encode()),
            Entry("bundle.json", PUBLIC_MODE, metadata),
            *(Entry(f"config/{f.name}", f.mode, f.data) for f in device.files),
            *(Entry(f"wheels/{w.name}", PUBLIC_MODE, source=w) for w in wheel_set.wheels),
        ]
        entries.append(Entry("SHA256SUMS", PUBLIC_MODE, checksums(entries)))
        top = f"fedge-{device_id}"
        write_tar_gz(Path(out), top, entries, private_dirs=frozenset({"config"}))
        _summary(console, entries, wheel_set.new)
    return BundleResult(
        Path(out),
        top,
        device_id,
        fleet,
        target.name,
        tuple(w.name for w in wheel_set.wheels),
        wheel_set.new,
    )


def _bundle_json(
    device_id: str, fleet: str, target: Platform, own_wheel: Path, wheels: tuple[Path, ...]
) -> bytes:
    """``bundle.json``: what was bundled, for whoever inspects a bundle later."""
    metadata = {
        "format": BUNDLE_FORMAT,
        "device_id": device_id,
        "fleet": fleet,
        "platform": target.name,
        "machine": target.machine,
        "python": PYTHON_VERSION,
        "fedge_wheel": own_wheel.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wheels": [w.name for w in wheels],
    }
    return (json.dumps(metadata, indent=2) + "\n").encode()


def _summary(console: Console, entries: list[Entry], new: tuple[str, ...]) -> None:
    table = Table(title="bundle contents", show_lines=False)
    for column in ("file", "mode", "size", "source"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for entry in entries:
        table.add_row(entry.name, f"{entry.mode:04o}", _size(entry.size()), _origin(entry, new))
    console.print(table)


def _origin(entry: Entry, new: tuple[str, ...]) -> str:
    name = Path(entry.name).name
    if entry.name.startswith("config/"):
        return "provisioned"
    if entry.source is None:
        return "generated"
    if name.startswith("fedge-"):
        return "built from source"
    return "downloaded" if name in new else "cache"


def _size(n: int) -> str:
    return f"{n:,} B" if n < 1 << 10 else f"{n / (1 << 10):,.0f} KiB"


def build_parser(prog: str = "fedge bundle") -> argparse.ArgumentParser:
    """Argument parser of ``fedge bundle``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build one device's flashable bundle: fedge[edge] wheels for the device's "
        "platform and CPython 3.11, its device.toml, certificates and keys, a systemd unit and "
        "an offline install.sh.",
    )
    parser.add_argument("--device-id", required=True, help="device to bundle, e.g. dev-0001")
    parser.add_argument(
        "--provisioned",
        type=Path,
        required=True,
        help="directory written by `fedge provision --out`",
    )
    parser.add_argument(
        "--platform", required=True, help=f"target platform: {', '.join(sorted(PLATFORMS))}"
    )
    parser.add_argument("--out", type=Path, help="archive to write (default: DEVICE-ID.tar.gz)")
    parser.add_argument(
        "--cache-dir", type=Path, help=f"wheel cache (default: {default_cache_dir()})"
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask the index even when the wheel cache has everything",
    )
    parser.add_argument(
        "--no-constraints",
        action="store_true",
        help="do not pin versions with the checkout's constraints.txt",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO_ROOT,
        help=f"fedge checkout to build the wheel from (default: {REPO_ROOT})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fedge bundle``; returns the exit code (0 ok, 2 bad input or failed download).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments after ``bundle`` (defaults to ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    out = args.out or Path(f"{args.device_id}.tar.gz")
    try:
        result = build_bundle(
            args.device_id,
            args.provisioned,
            args.platform,
            out,
            source=args.source,
            cache_dir=args.cache_dir,
            use_constraints=not args.no_constraints,
            refresh=args.refresh,
            console=console,
        )
    except FedgeError as exc:
        print(f"fedge bundle: error: {exc}", file=sys.stderr)
        return 2
    size_mb = result.path.stat().st_size / 1e6
    print(
        f"wrote {result.path} ({size_mb:.1f} MB, mode 0600: it holds the device's keys) for "
        f"{result.device_id} of fleet {result.fleet} on {result.platform}: "
        f"{len(result.wheels)} wheels, {len(result.new_wheels)} newly downloaded"
    )
    print(f"on the device:  tar xzf {result.path.name} && sudo ./{result.top}/install.sh")
    return 0
