"""Benchmark of secure aggregation (SecAgg+): client stages, server unmask vs the PRG bound, Flower.

Run ``python -m tools.bench.secagg [--quick]``. For every (n, d, dropout) point one round
runs with real clients and a real server; the server lives in its own process (so its
memory is its own) and gets every message as msgpack bytes. All times are CPU seconds of
the process doing the work (``time.process_time``), which stay meaningful on a machine
shared with other jobs; Flower's are measured the same way.

What is simulated, and why the numbers still hold:

* Client stages are timed on one representative device per d, a real client with the
  full d. The other n - 1 devices are real clients too (keys, signatures, certificates,
  Shamir shares, AES-GCM, X25519) but mask a 1-element vector; the server receives a
  uniformly random d-element vector in place of their masked input. Its work does not
  depend on the values (the tests show masked inputs are uniform), so the timings and
  memory are those of a real round; only the final sum is meaningless, which is why a
  small all-real round is checked for exactness first.
* Devices drop out after ShareKeys (before MaskedInput): the expensive case, where the
  server rebuilds their masking keys and removes pairwise masks.
* (k, t) come from ``choose_graph_params`` with the planned dropout max(actual, 10 %)
  and corrupt fraction 0 (an active server, no colluding devices).
* The PRG bound is the time of AES-256-CTR over 4 d zero bytes (``update_into`` a reused
  buffer) for as many fresh keys as the server regenerated masks, measured on up to 1,000
  keys right after the unmask and scaled linearly.
* Peak server memory is the tracemalloc peak of a replay of the same message log into a
  fresh server in the server process (timing runs without tracemalloc).
* Flower (``flwr`` 1.42 in /tmp/flwr-venv): the driver below times, in that venv, every
  call on the code paths of Flower's secaggplus_mod (client) and
  SecAggPlusWorkflow.unmask_stage (server) for the same k (num_shares = k + 1: Flower
  counts the own share) and t: client share = 2 key pairs + create_shares of the seed and
  of the (PEM) masking key + per neighbour ECDH(PEM) and Fernet encrypt; client mask = per
  neighbour Fernet decrypt + seed PRG + per neighbour ECDH + PRG add + mod (quantization
  excluded: our codec does it before SecAgg); server unmask = per survivor combine_shares
  + PRG subtract, per dropped device combine_shares of its key, per (dropped, surviving
  neighbour) pair ECDH + PRG add, + mod. Each call's mean (at least one call, up to
  --flower-budget seconds of calls) is multiplied by its count: Flower's Shamir
  (pycryptodome, GF(2^128) in Python) takes seconds per secret at t ~ 100, so running
  whole rounds of it would take hours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from fedge.tools.bench._common import command_line
from fedge.tools.bench._secagg_flower import FLOWER_PYTHON, run_flower
from fedge.tools.bench._secagg_round import PointResult, run_point
from fedge.tools.bench._secagg_tables import print_tables

MODULE = "tools.bench.secagg"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="n=100, d=100k only (about a minute)")
    parser.add_argument("--n", type=int, nargs="*", help="override the n values")
    parser.add_argument("--d", type=int, nargs="*", help="override the d values")
    parser.add_argument("--dropout", type=float, nargs="*", help="override the dropout rates")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower comparison")
    parser.add_argument(
        "--flower-budget", type=float, default=0.5, help="seconds of calls per Flower unit cost"
    )
    parser.add_argument("--json", type=Path, default=Path("out/bench/secagg.json"))
    return parser.parse_args(argv)


def exact_check(console: Console) -> bool:
    """A small round with every client real must sum exactly before any point is timed."""
    check = run_point(50, [1000], 0.1, seed=1, all_real=True)[0]
    console.print(
        f"exactness check (n=50, d=1000, 10 % dropout, all clients real): "
        f"{'exact' if check.server['exact'] else 'WRONG'}"
    )
    return bool(check.server["exact"])


def run_points(
    console: Console,
    ns: Sequence[int],
    ds: Sequence[int],
    drops: Sequence[float],
    flower_budget: float | None,
) -> list[PointResult]:
    """Every (n, dropout) point for all d, with Flower's costs unless ``flower_budget`` is None."""
    results: list[PointResult] = []
    started = time.perf_counter()
    for n in ns:
        for dropout in drops:
            points = run_point(n, ds, dropout, seed=n)
            if flower_budget is not None:
                costs = run_flower(points, round(dropout * n), flower_budget)
                for point, cost in zip(points, costs, strict=True):
                    point.flower = cost
            results.extend(points)
            elapsed = time.perf_counter() - started
            console.print(f"  done n={n} dropout={dropout:.0%} ({elapsed:.0f} s elapsed)")
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print rich tables and write JSON."""
    args = parse_args(argv)
    console = Console(width=max(Console().width, 190))
    ns = args.n or ([100] if args.quick else [100, 500, 1000])
    ds = args.d or ([100_000] if args.quick else [100_000, 1_000_000])
    drops = args.dropout if args.dropout is not None else [0.0, 0.1, 0.3]
    flower = not args.no_flower and FLOWER_PYTHON.exists()
    if not args.no_flower and not flower:
        console.print(f"[yellow]Flower venv not found at {FLOWER_PYTHON}: skipping Flower[/]")
    if not exact_check(console):
        return 1
    results = run_points(console, ns, ds, drops, args.flower_budget if flower else None)
    command = command_line(MODULE, argv)
    print_tables(console, results, command)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"command": command, "points": [asdict(r) for r in results]}, indent=1)
    )
    console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
