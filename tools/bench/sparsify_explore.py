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
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.codec.pipeline import unflatten
from fedge.edge_client.codec.quantize import dequantize, stochastic_round
from fedge.firmware_sim.partition import parse_partition_spec, partition, split_local
from fedge.model_export.datasets import load_fashion_mnist
from fedge.tools.bench._common import command_line, machine_load, markdown_table, print_table

MODULE = "tools.bench.sparsify_explore"
DEVICES, PER_ROUND, EPOCHS, LR, BATCH = 100, 20, 2, 0.1, 32
PARTITION = "dirichlet:0.5"
DOC_PLOT = Path("docs/img/sparsify_explore.png")
# Keras copies of zoo models: conv filters, then dense hidden units (0: no hidden layer).
MODELS = {"cnn-fmnist": (8, 16, 0), "cnn-fmnist-wide": (16, 32, 64)}


@dataclass(frozen=True)
class Scheme:
    """One row: a kind (see the module docstring) and its parameters."""

    kind: str
    frac: float = 1.0
    bits: int = 0
    gamma: float = 1.0
    block: int = 1
    beta: float = 0.0
    warmup: float = 0.0
    tau: float = 3.0
    rank: int = 0
    rank2: int = 0
    oracle: int = 0
    server_lr: float = 1.0

    @property
    def label(self) -> str:
        defaults = Scheme(self.kind)
        extra = {k: getattr(self, k) != getattr(defaults, k)
                 for k in ("gamma", "block", "beta", "warmup", "tau", "rank", "rank2", "oracle",
                           "server_lr")}
        parts = [self.kind] if self.kind == "dense" else [self.kind, f"{self.frac:g}",
                                                          f"q{self.bits}" if self.bits else "f32"]
        parts += [f"{k}={getattr(self, k):g}" for k, on in extra.items() if on]
        return " ".join(parts)


DEFAULT_SCHEMES = (
    Scheme("dense"),
    Scheme("topk", 0.01, 4), Scheme("topk", 0.01, 4, gamma=0.5), Scheme("topk", 0.01, 4, gamma=0.0),
    Scheme("topk", 0.01), Scheme("topk", 0.03), Scheme("topk", 0.1), Scheme("topk", 0.3),
    Scheme("block", 0.07, 2, block=10),
    Scheme("shared", 0.1, 2), Scheme("submodel", 0.1, 2), Scheme("refit", 0.01, 4),
    Scheme("predictive", 0.01, 4, beta=1.0),
    Scheme("topk", 0.01, 4, warmup=0.1), Scheme("predictive", 0.01, 4, beta=1.0, warmup=0.1),
    Scheme("subspace", 0.0076, 4, rank=10, rank2=4),
    Scheme("subspace", 0.0076, 4, rank=10, rank2=4, oracle=1),
)
INT_FIELDS = ("bits", "block", "rank", "rank2", "oracle")


def parse_scheme(text: str) -> Scheme:
    """``kind[:frac[:bits[:key=value...]]]``, e.g. ``topk:0.01:4:gamma=0.5``."""
    kind, *rest = text.split(":")
    values: dict[str, Any] = {}
    for i, item in enumerate(rest):
        key, eq, value = item.partition("=")
        name = key if eq else ("frac", "bits")[i]
        values[name] = float(value if eq else key)
    for name in INT_FIELDS:
        if name in values:
            values[name] = int(values[name])
    return Scheme(kind, **values)


@dataclass
class Federation:
    """Data, model and the local trainer shared by every scheme (one Keras model, reused)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shards: list[np.ndarray]
    model: Any
    init: np.ndarray
    seed: int
    shapes: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def build(cls, model_name: str, seed: int = 0) -> Federation:
        import tensorflow as tf

        xtr, ytr, xte, yte = load_fashion_mnist()
        parts = partition(ytr, DEVICES, parse_partition_spec(PARTITION), seed, min_size=2)
        shards = [split_local(p, 0.2, (seed, i))[0] for i, p in enumerate(parts)]
        tf.random.set_seed(seed)
        first, second, hidden = MODELS[model_name]
        layers = tf.keras.layers
        model = tf.keras.Sequential([
            tf.keras.Input((28, 28, 1)),
            layers.Conv2D(first, 3, activation="relu"), layers.AveragePooling2D(),
            layers.Conv2D(second, 3, activation="relu"), layers.AveragePooling2D(),
            layers.Flatten(), *([layers.Dense(hidden, activation="relu")] if hidden else []),
            layers.Dense(10)])
        weights = model.get_weights()
        fed = cls(xtr.reshape(-1, 28, 28, 1).astype(np.float32), ytr,
                  xte.reshape(-1, 28, 28, 1).astype(np.float32), yte, shards, model,
                  np.concatenate([w.ravel() for w in weights]).astype(np.float64), seed,
                  tuple(w.shape for w in weights))
        fed._compile()
        return fed

    def _compile(self) -> None:
        import tensorflow as tf

        model, opt = self.model, tf.keras.optimizers.SGD(LR)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._free = [tf.Variable(tf.ones(v.shape), trainable=False)
                      for v in model.trainable_variables]
        self._all_free = True  # what ``self._free`` holds now: every coordinate free

        @tf.function
        def step(x: Any, y: Any) -> None:
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            opt.apply_gradients(zip([g * f for g, f in zip(grads, self._free, strict=True)],
                                    model.trainable_variables, strict=True))

        self._step = step

    def _set_free(self, free: np.ndarray | None) -> None:
        """Mask the gradients to ``free`` (None: all free; not reassigned while it stays so)."""
        if free is None and self._all_free:
            return
        mask = np.ones(self.init.size) if free is None else free
        for var, part in zip(self._free, unflatten(mask, self.shapes), strict=True):
            var.assign(part)
        self._all_free = free is None

    def train(self, weights: np.ndarray, device: int, seed: int,
              free: np.ndarray | None = None) -> np.ndarray:
        """Local SGD from ``weights``; only coordinates where ``free`` is 1 move. Returns delta."""
        self._set_free(free)
        self.model.set_weights(unflatten(weights, self.shapes))
        rng = np.random.default_rng(seed)
        for _ in range(EPOCHS):
            order = rng.permutation(self.shards[device])
            for lo in range(0, len(order), BATCH):
                batch = order[lo:lo + BATCH]
                self._step(self.x_train[batch], self.y_train[batch])
        new = np.concatenate([w.ravel() for w in self.model.get_weights()])
        return new.astype(np.float64) - weights

    def accuracy(self, weights: np.ndarray) -> float:
        self.model.set_weights(unflatten(weights, self.shapes))
        logits = self.model.predict(self.x_test, batch_size=2000, verbose=0)
        return float(np.mean(np.argmax(logits, axis=1) == self.y_test))


def quantize(values: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """The codec's stochastic quantizer with one scale (float values when ``bits`` is 0)."""
    if not bits or values.size == 0:
        return values
    scale = np.array(np.max(np.abs(values)))
    return dequantize(stochastic_round(values, scale, bits, rng), scale, bits)


def top_coordinates(vec: np.ndarray, frac: float, block: int = 1) -> np.ndarray:
    """Indices of the largest ``frac`` of ``vec`` (by block L2 norm when ``block`` > 1)."""
    nb = -(-vec.size // block)
    padded = np.zeros(nb * block)
    padded[:vec.size] = vec
    norms = np.linalg.norm(padded.reshape(nb, block), axis=1)
    keep = max(1, round(frac * vec.size / block))
    blocks = np.argpartition(-norms, keep - 1)[:keep]
    idx = (blocks[:, None] * block + np.arange(block)).ravel()
    return idx[idx < vec.size]


@dataclass
class RoundContext:
    """What the server fixes for a round: shared coordinates, the last global update, the
    top-k density and, for ``subspace``, the shared bases (tensor index -> orthonormal columns)."""

    shared: np.ndarray | None
    previous_update: np.ndarray
    density: float
    bases: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """What the server decodes from one client (dense vector) and its estimated payload bits."""

    sent: np.ndarray
    bits: float


def round_density(scheme: Scheme, rnd: int) -> float:
    """The top-k density of round ``rnd``: ``frac``, or the warm-up decaying towards it."""
    if scheme.warmup <= scheme.frac:
        return scheme.frac
    return scheme.frac + (scheme.warmup - scheme.frac) * math.exp(-rnd / scheme.tau)


def value_bits(count: int, bits: int) -> float:
    """Bits of ``count`` values at ``bits`` each (float32 when 0), with one float16 scale."""
    return count * (bits or 32) + (16 if bits and count else 0)


def index_bits(n: int, k: int) -> float:
    """Bits of ``k`` Elias-Fano coded indices out of ``n``."""
    return k * (2 + math.log2(n / k)) if k else 0.0


def shared_coordinates(scheme: Scheme, momentum: np.ndarray, rnd: int) -> np.ndarray | None:
    """The round's common coordinates for ``shared`` and ``submodel``, else None."""
    if scheme.kind not in ("shared", "submodel"):
        return None
    size = momentum.size
    count = int(scheme.frac * size)
    rng = np.random.default_rng(1000 + rnd)
    top = np.zeros(0, dtype=np.int64)
    if scheme.kind == "shared" and rnd:
        top = np.argsort(-np.abs(momentum))[: count // 2]
    rest = np.setdiff1d(np.arange(size), top)
    return np.sort(np.concatenate([top, rng.choice(rest, count - len(top), replace=False)]))


def as_matrix(part: np.ndarray) -> np.ndarray:
    """A kernel as (fan-in, outputs)."""
    return part.reshape(-1, part.shape[-1])


def kernel_ranks(scheme: Scheme, shapes: tuple[tuple[int, ...], ...]) -> dict[int, int]:
    """Tensor index -> rank for ``subspace`` and ``lowrank`` (see the module docstring), else
    empty."""
    if scheme.kind not in ("subspace", "lowrank"):
        return {}
    kernels = [i for i, shape in enumerate(shapes) if len(shape) >= 2]
    ranks = {kernels[-1]: scheme.rank}
    for i in kernels[:-1]:
        if scheme.rank2 and math.prod(shapes[i][:-1]) >= 4 * scheme.rank2:
            ranks[i] = scheme.rank2
    return ranks


def subspace_bases(ranks: dict[int, int], shapes: tuple[tuple[int, ...], ...],
                   updates: Sequence[np.ndarray], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Per kernel, the leading left singular vectors of its ``updates``, topped up at random."""
    bases = {}
    for i, rank in ranks.items():
        fan_in = math.prod(shapes[i][:-1])
        lead = np.zeros((fan_in, 0))
        if updates:
            stacked = np.concatenate([as_matrix(unflatten(u, shapes)[i]) for u in updates], axis=1)
            lead = np.linalg.svd(stacked, full_matrices=False)[0][:, :rank]
        if lead.shape[1] < rank:
            filler = rng.standard_normal((fan_in, rank - lead.shape[1]))
            lead = np.linalg.qr(np.concatenate([lead, filler], axis=1))[0]
        bases[i] = lead
    return bases


def subspace_part(target: np.ndarray, bases: dict[int, np.ndarray],
                  shapes: tuple[tuple[int, ...], ...], bits: int,
                  rng: np.random.Generator) -> Message:
    """The kernels of ``target`` coded as (quantized) coefficients in the shared bases."""
    parts = unflatten(target, shapes)
    coded = [np.zeros_like(p) for p in parts]
    cost = 0.0
    for i, basis in bases.items():
        coeffs = quantize(basis.T @ as_matrix(parts[i]), bits, rng)
        coded[i] = (basis @ coeffs).reshape(parts[i].shape)
        cost += value_bits(coeffs.size, bits)
    return Message(np.concatenate([c.ravel() for c in coded]), cost)


def lowrank_part(target: np.ndarray, ranks: dict[int, int], shapes: tuple[tuple[int, ...], ...],
                 bits: int, rng: np.random.Generator) -> Message:
    """The kernels of ``target`` coded as their own (quantized) truncated-SVD factors."""
    parts = unflatten(target, shapes)
    coded = [np.zeros_like(p) for p in parts]
    cost = 0.0
    for i, rank in ranks.items():
        u, s, vt = np.linalg.svd(as_matrix(parts[i]), full_matrices=False)
        root = np.sqrt(s[:rank])
        left, right = u[:, :rank] * root, vt[:rank].T * root
        left, right = ([quantize(col, bits, rng) for col in m.T] for m in (left, right))
        coded[i] = (np.stack(left, 1) @ np.stack(right, 1).T).reshape(parts[i].shape)
        cost += sum(value_bits(col.size, bits) for col in (*left, *right))
    return Message(np.concatenate([c.ravel() for c in coded]), cost)


def local_delta(fed: Federation, scheme: Scheme, ctx: RoundContext, weights: np.ndarray,
                device: int, seed: int) -> np.ndarray:
    """A client's local training (``submodel`` trains only the shared coordinates,
    ``lookahead`` starts from the prediction)."""
    if scheme.kind == "lookahead":
        return fed.train(weights + scheme.beta * ctx.previous_update, device, seed)
    if scheme.kind != "submodel":
        return fed.train(weights, device, seed)
    assert ctx.shared is not None
    free = np.zeros_like(weights)
    free[ctx.shared] = 1.0
    return fed.train(weights, device, seed, free)


def client_message(fed: Federation, scheme: Scheme, ctx: RoundContext, weights: np.ndarray,
                   delta: np.ndarray, device: int, residual: np.ndarray, seed: int) -> Message:
    """What one client sends for ``delta``; updates its error-feedback ``residual`` in place."""
    if scheme.kind == "dense":
        return Message(delta, value_bits(delta.size, 0))
    rng = np.random.default_rng(seed)
    predicted = 0.0 if scheme.kind == "lookahead" else scheme.beta * ctx.previous_update
    target = delta - predicted + scheme.gamma * residual
    if ctx.bases:
        base = subspace_part(target, ctx.bases, fed.shapes, scheme.bits, rng)
    elif scheme.kind == "lowrank":
        base = lowrank_part(target, kernel_ranks(scheme, fed.shapes), fed.shapes, scheme.bits, rng)
    else:
        base = Message(np.zeros_like(target), 0.0)
    sent, cost = base.sent.copy(), base.bits
    if ctx.shared is not None:
        idx = ctx.shared
    elif scheme.kind == "refit":
        idx = top_coordinates(target, ctx.density)
        free = np.zeros_like(weights)
        free[idx] = 1.0
        target = fed.train(weights, device, seed + 7, free) + scheme.gamma * residual
    else:
        idx = top_coordinates(target - sent, ctx.density, scheme.block)
    if ctx.shared is None:
        blocks = len(np.unique(idx // scheme.block))
        cost += index_bits(-(-target.size // scheme.block), blocks)
    sent[idx] += quantize((target - sent)[idx], scheme.bits, rng)
    residual[:] = target - sent
    return Message(sent, cost + value_bits(len(idx), scheme.bits))


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
        ctx = RoundContext(shared_coordinates(scheme, momentum, rnd), previous,
                           round_density(scheme, rnd))
        sizes = {int(d): len(fed.shards[d]) for d in draw.choice(DEVICES, PER_ROUND, replace=False)}
        deltas = {d: local_delta(fed, scheme, ctx, weights, d, seed=rnd * 1000 + d) for d in sizes}
        if scheme.kind == "subspace":
            history = list(recent)
            if scheme.oracle:  # the round's own aggregate, which no real server has yet
                history = [np.average(list(deltas.values()), axis=0, weights=list(sizes.values()))]
            ctx.bases = subspace_bases(ranks, fed.shapes, history, basis_rng)
        total = np.zeros_like(weights)
        for d, delta in deltas.items():
            message = client_message(fed, scheme, ctx, weights, delta, d, residuals[d],
                                     seed=rnd * 1000 + d)
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
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], label=label, color=colors(i % 20),
                linewidth=2.5 if label == "dense" else 1.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"sparsification schemes on {model} (in-process replay)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: Sequence[str] | None = None) -> None:
    """Run every scheme; print the table; write JSON, Markdown and the plot."""
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--model", choices=sorted(MODELS), default="cnn-fmnist")
    p.add_argument("--seed", type=int, default=0,
                   help="partition, initial weights and client draws (default 0)")
    p.add_argument("--schemes", help="comma-separated kind[:frac[:bits[:key=value]]] (default: "
                                     "the documented set)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--plot", type=Path, default=DOC_PLOT)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    schemes = ([parse_scheme(t) for t in args.schemes.split(",")] if args.schemes
               else list(DEFAULT_SCHEMES))
    fed = Federation.build(args.model, args.seed)
    curves, rows = {}, []
    for scheme in schemes:
        t0 = time.time()
        acc, payload = run_scheme(fed, scheme, args.rounds)
        curves[scheme.label] = acc
        rows.append([scheme.label, round(100 * acc[-1], 1), round(100 * float(np.mean(acc[-3:])), 1),
                     round(payload), round(time.time() - t0)])
        print(f"[explore] {rows[-1]}", flush=True)
    columns = ("scheme", "final acc", "last-3 acc", "payload B", "wall s")
    command = command_line(MODULE)
    note = (f"{args.model} ({fed.init.size:,} params), {DEVICES} devices, {PARTITION}, {PER_ROUND} per round, {args.rounds} rounds, seed {args.seed}, "
            f"{EPOCHS} local epochs, lr {LR}; load {machine_load()['loadavg']}")
    print_table("sparsification schemes (in-process replay)", columns, rows, command, note)
    plot(curves, args.plot, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sparsify_explore.json").write_text(json.dumps(
        {"command": command, "schemes": [asdict(s) for s in schemes], "curves": curves},
        indent=1))
    (args.out / "sparsify_explore.md").write_text(
        markdown_table(columns, rows) + f"\n\n{note}\n\n`{command}`\n")
    print(f"wrote {args.out / 'sparsify_explore.md'} and {args.plot}")


if __name__ == "__main__":
    main()
