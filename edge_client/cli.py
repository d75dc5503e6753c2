"""The `fedge` command of a device install: `fedge device --config PATH`, nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedge.edge_client import event_loop
from fedge.edge_client.errors import FedgeError

COMMAND = "device"
FULL_ONLY = ("server", "sim", "export", "provision", "bundle", "bench")
"""Commands of the full `fedge` CLI (fedge.tools.cli) that a device install does not carry."""


def build_parser() -> argparse.ArgumentParser:
    """Parser of the device-only ``fedge``: one subcommand, ``device``."""
    parser = argparse.ArgumentParser(
        prog="fedge",
        description="fedge edge client (device install): run the device agent.",
        epilog="This install carries the edge client only; server, sim, export, provision, "
        "bundle and bench belong to the full fedge package.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    device = sub.add_parser(COMMAND, help="run the device agent from a device.toml")
    device.add_argument("--config", required=True, type=Path, help="device.toml")
    device.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at DEBUG"
    )
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand the user typed: the first argument that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedge`` on a device; returns the exit code (2 on bad config).

    Any command other than ``device`` is refused with a message saying that this install only
    runs the device agent (argparse exits with status 2).
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = _command_of(args_in)
    if command is not None and command != COMMAND:
        known = " (a command of the full fedge package)" if command in FULL_ONLY else ""
        parser.error(
            f"'{command}'{known} is not available on this device install: it only runs "
            f"`fedge {COMMAND} --config PATH`"
        )
    args = parser.parse_args(args_in)
    _setup_logging(args.verbose)
    from fedge.edge_client.device_main import run_device  # the agent's imports only when run

    try:
        return int(run_device(args.config, event_loop.run_until_signal))
    except FedgeError as exc:
        print(f"fedge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
