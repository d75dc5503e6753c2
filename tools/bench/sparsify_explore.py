"""Sparsification schemes side by side, in one process: what top-k can and cannot buy cnn-fmnist.

Run ``python -m tools.bench.sparsify_explore [--rounds 20] [--seed 0] [--schemes a,b,...]``.

The compression benchmark runs every row through the real fleet (broker, agents, TFLite,
codec, server): minutes per row. This script replays the same federated setting in one
process with Keras (the same architecture as ``cnn-fmnist``, the simulator's partition of
Fashion-MNIST, 100 devices, Dirichlet 0.5, 20 clients a round drawn by a seeded generator,
2 local epochs of SGD at lr 0.1, batch 32), about a minute per row on 2 cores, so that
schemes the codec does not ship can be compared before anyone builds them. The dense and
``topk:0.01+q4`` rows land within two points of the simulator's (docs/compression.md); the
replay itself is not bit-reproducible (TensorFlow's threaded kernels).

Schemes (``frac`` = share of the 5,258 coordinates a client sends, ``bits`` = stochastic
quantization width, 0 = float values):

* ``dense``: FedAvg, nothing compressed.
* ``topk``: each client sends the top ``frac`` of its delta plus its error-feedback residual
  (residual scaled by ``gamma`` each time it is used: 1 = classic error feedback, 0 = none).
* ``block``: the same with whole blocks of ``block`` consecutive coordinates (a dense-layer
  row), so that one index covers ``block`` values.
* ``shared``: every client sends the same ``frac`` coordinates, chosen by the server (half
  the largest of its update momentum, half at random), so no index travels.
* ``submodel``: every client trains only a random shared ``frac`` of the coordinates and
  sends all of them (federated sub-model training).
* ``refit``: a client trains, picks its top ``frac`` coordinates, retrains from the global
  weights with only those free, and sends them (twice the compute).
* ``predictive``: a client codes its delta minus ``beta`` times the last global update (which
  it would receive on the downlink); the server adds it back (the codec's first ``pred``).
* ``lookahead``: a client trains from the global weights plus ``beta`` times the last global
  update and codes what its training adds; the server adds the same prediction back (the
  codec's ``pred``). With ``frac`` 1 and float values it is FedAvg with this momentum, uncompressed.
* ``subspace``: every client sends the coefficients of its kernels in a basis the server
  shares (the leading left singular vectors of the kernels' last three global updates:
  ``rank`` per output of the classifier kernel, ``rank2`` per output of every other kernel
  with a fan-in of at least ``4 * rank2``), plus the top ``frac`` of what the basis misses.
  ``oracle=1`` takes the basis from the round's own aggregate instead, which no server knows
  before the round: an upper bound.
* ``lowrank``: each client sends its own rank-``rank`` factors of the classifier kernel (and
  rank-``rank2`` factors of the other kernels, as for ``subspace``), one quantization scale per
  factor column, plus the top ``frac`` of what the factors miss (PowerSGD's idea, no shared
  basis).

``server_lr`` scales the averaged messages before the server adds them (and the prediction
term) to the weights.

``warmup=F`` (top-k kinds) starts at density F and decays to ``frac`` with a time constant of
``tau`` rounds, as in Deep Gradient Compression's warm-up. The "payload B" column estimates the
codec bytes of one message, averaged over rounds: values at ``bits`` (32 when 0), Elias-Fano
indices at ``2 + log2(n/k)`` bits each, a 2-byte scale per quantized section; no framing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedge.tools.bench._common import command_line, machine_load, markdown_table, print_table
from fedge.tools.bench._sparsify_coding import (
    RoundContext,
    client_message,
    local_delta,
    subspace_bases,
)
from fedge.tools.bench._sparsify_federation import (
    DEVICES,
    EPOCHS,
    LR,
    MODELS,
    PARTITION,
    PER_ROUND,
    Federation,
)
from fedge.tools.bench._sparsify_schemes import (
    DEFAULT_SCHEMES,
    Scheme,
    kernel_ranks,
    parse_scheme,
    round_density,
    shared_coordinates,
)

MODULE = "tools.bench.sparsify_explore"
DOC_PLOT = Path("docs/img/sparsify_explore.png")
COLUMNS = ("scheme", "final acc", "last-3 acc", "payload B", "wall s")


def run_scheme(fed: Federation, scheme: Scheme, rounds: int) -> tuple[list[float], float]:
    """Accuracy after each round of FedAvg with ``scheme`` on the clients, and
    the mean estimated payload bytes of a client message."""
    draw = np.random.default_rng(fed.seed)
    basis_rng = np.random.default_rng(fed.seed + 1)
    ranks = kernel_ranks(scheme, fed.shapes)
    weights = fed.init.copy()
    residuals = np.zeros((DEVICES, weights.size))
    momentum = np.zeros_like(weights)
    recent: deque[np.ndarray] = deque(maxlen=3)  # the last global updates
    accuracy, payload_bits = [], []
    for rnd in range(rounds):
        previous = recent[-1] if recent else np.zeros_like(weights)
        ctx = RoundContext(
            shared_coordinates(scheme, momentum, rnd), previous, round_density(scheme, rnd)
        )
        sizes = {int(d): len(fed.shards[d]) for d in draw.choice(DEVICES, PER_ROUND, replace=False)}
        deltas = {d: local_delta(fed, scheme, ctx, weights, d, seed=rnd * 1000 + d) for d in sizes}
        if scheme.kind == "subspace":
            history = list(recent)
            if scheme.oracle:  # the round's own aggregate, which no real server has yet
                history = [np.average(list(deltas.values()), axis=0, weights=list(sizes.values()))]
            ctx.bases = subspace_bases(ranks, fed.shapes, history, basis_rng)
        total = np.zeros_like(weights)
        for d, delta in deltas.items():
            message = client_message(
                fed, scheme, ctx, weights, delta, d, residuals[d], seed=rnd * 1000 + d
            )
            total += sizes[d] * message.sent
            payload_bits.append(message.bits)
        update = scheme.server_lr * total / sum(sizes.values()) + scheme.beta * previous
        momentum = 0.9 * momentum + update
        weights = weights + update
        recent.append(update)
        accuracy.append(fed.accuracy(weights))
    return accuracy, float(np.mean(payload_bits)) / 8


def plot(curves: dict[str, list[float]], path: Path, model: str) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    colors = colormaps["tab20"]
    for i, (label, acc) in enumerate(curves.items()):
        ax.plot(
            range(1, len(acc) + 1),
            [100 * a for a in acc],
            label=label,
            color=colors(i % 20),
            linewidth=2.5 if label == "dense" else 1.2,
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"sparsification schemes on {model} (in-process replay)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--model", choices=sorted(MODELS), default="cnn-fmnist")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="partition, initial weights and client draws (default 0)",
    )
    p.add_argument(
        "--schemes",
        help="comma-separated kind[:frac[:bits[:key=value]]] (default: the documented set)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--plot", type=Path, default=DOC_PLOT)
    return p.parse_args(argv)


def run_schemes(
    fed: Federation, schemes: Sequence[Scheme], rounds: int
) -> tuple[dict[str, list[float]], list[list[object]]]:
    """Every scheme in turn: accuracy curves by label, and the table rows."""
    curves, rows = {}, []
    for scheme in schemes:
        t0 = time.time()
        acc, payload = run_scheme(fed, scheme, rounds)
        curves[scheme.label] = acc
        rows.append(
            [
                scheme.label,
                round(100 * acc[-1], 1),
                round(100 * float(np.mean(acc[-3:])), 1),
                round(payload),
                round(time.time() - t0),
            ]
        )
        print(f"[explore] {rows[-1]}", flush=True)
    return curves, rows


def main(argv: Sequence[str] | None = None) -> None:
    """Run every scheme; print the table; write JSON, Markdown and the plot."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    schemes = (
        [parse_scheme(t) for t in args.schemes.split(",")]
        if args.schemes
        else list(DEFAULT_SCHEMES)
    )
    fed = Federation.build(args.model, args.seed)
    curves, rows = run_schemes(fed, schemes, args.rounds)
    command = command_line(MODULE)
    note = (
        f"{args.model} ({fed.init.size:,} params), {DEVICES} devices, {PARTITION}, "
        f"{PER_ROUND} per round, {args.rounds} rounds, seed {args.seed}, "
        f"{EPOCHS} local epochs, lr {LR}; load {machine_load()['loadavg']}"
    )
    print_table("sparsification schemes (in-process replay)", COLUMNS, rows, command, note)
    plot(curves, args.plot, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sparsify_explore.json").write_text(
        json.dumps(
            {"command": command, "schemes": [asdict(s) for s in schemes], "curves": curves},
            indent=1,
        )
    )
    (args.out / "sparsify_explore.md").write_text(
        markdown_table(COLUMNS, rows) + f"\n\n{note}\n\n`{command}`\n"
    )
    print(f"wrote {args.out / 'sparsify_explore.md'} and {args.plot}")


if __name__ == "__main__":
    main()
