"""`fedge provision`: the command-line front of fleet provisioning."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedge.edge_client.errors import FedgeError
from fedge.tools.provision.fleet import add_devices, provision_fleet
from fedge.tools.provision.layout import FleetLayout

DEFAULT_BROKER_HOST = "127.0.0.1"
DEFAULT_BROKER_PORT = 8883
DEFAULT_HTTP_URL = "https://127.0.0.1:8443"


def _devices(value: str) -> int | list[str]:
    if value.isdigit():
        return int(value)
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("give a device count or comma-separated device ids")
    return ids


def build_parser(prog: str = "fedge provision") -> argparse.ArgumentParser:
    """Argument parser of ``fedge provision`` (the lead's CLI can mount it as a subcommand)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Create a fleet CA, broker TLS/ACL files, server credentials and one "
        "ready-to-copy folder per device; --add adds devices to an existing fleet.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--fleet", help="fleet name (required unless --add)")
    parser.add_argument(
        "--devices",
        type=_devices,
        required=True,
        help="number of devices (dev-0001...) or comma-separated device ids",
    )
    parser.add_argument("--add", action="store_true", help="add devices to an existing fleet")
    parser.add_argument("--broker-host", help=f"host devices connect to ({DEFAULT_BROKER_HOST})")
    parser.add_argument("--broker-port", type=int, help=f"TLS port ({DEFAULT_BROKER_PORT})")
    parser.add_argument("--auth", choices=["cert", "password"], help="client auth (cert)")
    parser.add_argument("--http-url", help=f"server HTTP base URL ({DEFAULT_HTTP_URL})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fedge provision``; returns the process exit code (0 ok, 2 bad input).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments after ``provision`` (defaults to ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    fixed = {
        "--broker-host": args.broker_host,
        "--broker-port": args.broker_port,
        "--auth": args.auth,
        "--http-url": args.http_url,
    }
    try:
        if args.add:
            given = sorted(flag for flag, value in fixed.items() if value is not None)
            if given:
                parser.error(f"{', '.join(given)} cannot change with --add (fixed at creation)")
            new = add_devices(args.out, args.devices)
            print(f"added {len(new)} device(s): {', '.join(new) or '-'}")
            print(f"device folders: {FleetLayout.at(args.out).devices_dir}")
            print("reload a running broker so it reads the new password file: kill -HUP <pid>")
            return 0
        if not args.fleet:
            parser.error("--fleet is required when creating a fleet")
        result = provision_fleet(
            args.out,
            args.fleet,
            args.devices,
            broker_host=args.broker_host or DEFAULT_BROKER_HOST,
            broker_port=args.broker_port or DEFAULT_BROKER_PORT,
            auth=args.auth or "cert",
            http_url=args.http_url or DEFAULT_HTTP_URL,
        )
    except FedgeError as exc:
        print(f"fedge provision: error: {exc}", file=sys.stderr)
        return 2
    print(f"fleet {result.fleet!r} ({result.auth} auth) in {result.out_dir}")
    print(f"  CA certificate : {result.ca_cert}")
    print(f"  broker         : mosquitto -c {result.mosquitto_conf}   ({result.broker_url})")
    print(f"  server config  : {result.server_config}")
    print(f"  devices        : {len(result.devices)} folder(s) under {result.out_dir / 'devices'}")
    return 0
