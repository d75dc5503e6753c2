"""The `fedge` command: one entry point, one subcommand per job, heavy imports done lazily."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedge.edge_client import event_loop
from fedge.edge_client.errors import FedgeError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("amqtt", "transitions", "uvicorn", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a zoo model as a trainable TFLite artifact."""
    from fedge.model_export import export_model

    manifest = export_model(args.model, Path(args.out), batch_size=args.batch_size, seed=args.seed)
    print(
        f"wrote {args.out}/model.tflite and manifest.json: {manifest.model}, "
        f"{manifest.param_count} trainable parameters, batch {manifest.batch_size}"
    )
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """Run the federated server for one job."""
    from fedge.server.app import FedgeServer
    from fedge.server.job import load_job_config
    from fedge.server.settings import ServerSettings, load_server_settings

    job = load_job_config(Path(args.job)) if args.job else None
    host, _, port = (args.http or "127.0.0.1:8080").rpartition(":")
    overrides = dict(  # only what was given on the command line overrides server.toml
        broker_url=args.broker,
        http_host=(host or None) if args.http else None,
        http_port=int(port) if args.http else None,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        public_url=args.public_url,
    )
    if args.config:
        settings = load_server_settings(Path(args.config), **overrides)
    else:
        settings = ServerSettings(
            state_dir=Path(args.state_dir or "fedge-state"),
            broker_url=args.broker,
            http_host=host or "127.0.0.1",
            http_port=int(port),
            public_url=args.public_url,
        )
    server = FedgeServer(job, settings, exit_when_done=job is not None)
    what = f"job {job.name}" if job else "no job yet (POST /v1/jobs)"
    print(f"fedge server: fleet {server.fleet}, {what}, dashboard {server.dashboard_url}")
    status = event_loop.run_until_signal(server.run)
    print(f"fedge server: {status}")
    return 0 if status in ("finished", "running", "stopped") else 1


def cmd_device(args: argparse.Namespace) -> int:
    """Run the device agent from a device.toml."""
    from fedge.edge_client.device_main import run_device

    return int(run_device(Path(args.config), event_loop.run_until_signal))


def cmd_sim(args: argparse.Namespace) -> int:
    """Simulate a fleet locally."""
    from fedge.firmware_sim.cli import run_sim_command

    return run_sim_command(args)


def cmd_provision(args: argparse.Namespace) -> int:
    """Create CA, certificates, broker config and device folders."""
    from fedge.tools.provision import main as provision_main

    return int(provision_main(args.rest) or 0)


def cmd_bundle(args: argparse.Namespace) -> int:
    """Build a flashable device bundle."""
    from fedge.tools.bundle import main as bundle_main

    return int(bundle_main(args.rest) or 0)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark of tools/bench."""
    import runpy

    sys.argv = [f"fedge.tools.bench.{args.name}", *args.rest]
    runpy.run_module(f"fedge.tools.bench.{args.name.replace('-', '_')}", run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument(
        "--model", required=True, help="zoo model: mlp-digits, cnn-fmnist, transfer-fmnist"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("server", help=cmd_server.__doc__)
    p.add_argument(
        "--job",
        default=None,
        help="job.toml to run (without it the server waits for jobs posted to the API)",
    )
    p.add_argument(
        "--broker", default=None, help="mqtt://host:port or mqtts://... (default: embedded)"
    )
    p.add_argument(
        "--http", default=None, help="HOST:PORT to serve HTTP on (default 127.0.0.1:8080)"
    )
    p.add_argument("--state-dir", default=None)
    p.add_argument("--public-url", default=None, help="URL devices use to reach this server's HTTP")
    p.add_argument("--config", default=None, help="server.toml written by `fedge provision`")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("device", help=cmd_device.__doc__)
    p.add_argument("--config", required=True, help="device.toml")
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("sim", help=cmd_sim.__doc__)
    from fedge.firmware_sim.cli import add_sim_arguments

    add_sim_arguments(p)
    p.set_defaults(func=cmd_sim)

    for name, func in (("provision", cmd_provision), ("bundle", cmd_bundle)):
        p = sub.add_parser(name, help=func.__doc__, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    p.add_argument("name", help="train_speed, ingest, fleet, compression, secagg, privacy")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fedge` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # provision and bundle take their own options: pass them through
        if args.command not in ("provision", "bundle"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*extra, *args.rest]
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except FedgeError as exc:
        print(f"fedge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
