"""Arguments of `fedge sim` and the command itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedge.edge_client.errors import ConfigError


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    """Register the `fedge sim` options on ``p``."""
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--dataset", default="digits", help="digits or fashion-mnist")
    p.add_argument("--model", default=None, help="zoo model (default: mlp-digits / cnn-fmnist)")
    p.add_argument(
        "--partition",
        default="dirichlet:0.5",
        help="iid | dirichlet:ALPHA | shards:K, optionally +qskew:SIGMA",
    )
    p.add_argument(
        "--profiles", default="default", help="default | pi-heavy | android-heavy | PROFILE"
    )
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument(
        "--over-selection",
        type=float,
        default=1.3,
        help="devices asked per round = clients per round x this factor",
    )
    p.add_argument(
        "--wake-all",
        action="store_true",
        help="wake every waiting device for every round (selection then depends on the seed "
        "only: compare settings on the same clients)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="mid-round dropout probability of every device (default: per profile)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--broker", default=None, help="mqtt://host:port (default: embedded amqtt)")
    p.add_argument("--compression", default="none", help="codec spec, e.g. topk:0.01+q8")
    p.add_argument(
        "--downlink",
        default=None,
        help="send new models as a compressed delta, e.g. q8 (default: full weights)",
    )
    p.add_argument("--secagg", action="store_true", help="secure aggregation (SecAgg+)")
    p.add_argument("--secagg-clip", type=float, default=2.0, help="L2 clip of updates in the ring")
    p.add_argument("--secagg-bits", type=int, default=16, help="quantization bits in the ring")
    p.add_argument("--dp", default=None, help="central:Z:CLIP or distributed:Z:CLIP")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1, help="client learning rate")
    p.add_argument("--server-optimizer", default="fedavg", help="fedavg|fedavgm|fedadam|fedyogi")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--round-deadline", type=float, default=30.0, help="seconds (wall)")
    p.add_argument("--workers", type=int, default=2, help="device worker processes")
    p.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="virtual clock speed: 1440 runs a day of availability in a minute",
    )
    p.add_argument("--start-hour", type=float, default=0.0, help="virtual time of day at start")
    p.add_argument(
        "--availability",
        default=None,
        help="override every profile's pattern: always | night-charging | ...",
    )
    p.add_argument("--trace", default=None, help="availability trace CSV (docs/simulator.md)")
    p.add_argument("--federated-eval-every", type=int, default=0)
    p.add_argument("--artifact", default=None, help="use this exported artifact directory")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/sim")


def config_from_args(args: argparse.Namespace) -> object:
    """Build a SimConfig from parsed arguments."""
    from fedge.firmware_sim.sim import SimConfig

    return SimConfig(
        out=Path(args.out),
        devices=args.devices,
        rounds=args.rounds,
        dataset=args.dataset,
        model=args.model,
        partition=args.partition,
        profiles=args.profiles,
        clients_per_round=args.clients_per_round,
        over_selection=args.over_selection,
        wake_all=args.wake_all,
        dropout=args.dropout,
        seed=args.seed,
        broker=args.broker,
        compression=args.compression,
        downlink=args.downlink,
        secagg=args.secagg,
        secagg_clip=args.secagg_clip,
        secagg_bits=args.secagg_bits,
        dp=args.dp,
        local_epochs=args.local_epochs,
        lr=args.lr,
        server_optimizer=args.server_optimizer,
        server_lr=args.server_lr,
        round_deadline_s=args.round_deadline,
        workers=args.workers,
        speedup=args.speedup,
        start_hour=args.start_hour,
        availability=args.availability,
        trace=Path(args.trace) if args.trace else None,
        federated_eval_every=args.federated_eval_every,
        artifact=Path(args.artifact) if args.artifact else None,
        progress=not args.no_progress,
    )


def run_sim_command(args: argparse.Namespace) -> int:
    """`fedge sim`: run, then print the final accuracy and where the plots are."""
    from fedge.firmware_sim.sim import run_sim

    config = config_from_args(args)
    summary = run_sim(config)  # type: ignore[arg-type]
    acc = summary["final_accuracy"]
    if acc is None:
        raise ConfigError(f"no round committed (status {summary['status']}); see {args.out}")
    out = Path(args.out)
    print(
        f"final accuracy: {acc:.4f} after {len(summary['rounds'])} rounds "
        f"({summary['wall_time_s']:.0f} s)"
    )
    print(f"summary: {out / 'summary.json'}  rounds: {out / 'rounds.csv'}")
    print(f"plots: {out / 'accuracy_loss.png'} {out / 'participation.png'} {out / 'bytes.png'}")
    return 0
