"""TFF anchor of the compression benchmark: FedAvg with ``tff.learning.compression_aggregator``.

Run ``python -m tools.bench.tff_compression_anchor --config CFG.json --out RESULT.json``
(``tools.bench.compression`` does this in a child process, so TensorFlow and TFF's
``worker_binary`` never live in the benchmark's own process).

What is mirrored from the fleet simulator (``firmware_sim.sim.prepare``):

* the partition: ``partition(labels, devices, parse_partition_spec(spec), seed, min_size=2)``
  then ``split_local(idx, test_fraction, (seed, i))``; each client trains on its local train
  split only, and the global model is evaluated on the 10k Fashion-MNIST test set;
* the model: a Keras copy of ``cnn-fmnist`` (VALID 3x3 convs, ReLU, 2x2 mean pooling,
  dense logits) with the exported artifact's initial weights, checked against the artifact's
  TFLite ``infer`` signature before training; the global model of every round is evaluated
  through the artifact's ``evaluate`` signature, as the fedge server does;
* local SGD (``build_sgdm(lr)``, batch size, epochs, reshuffled every epoch), weighted FedAvg
  with a server SGD step of 1.0, the same rounds and clients per round (the clients of each
  round are given, e.g. those the simulator selected, or drawn with a seeded generator).

Uplink bytes are counted as TFF's encoders produce them: every tensor of the update goes
through the encoder ``EncodedSumFactory.quantize_above_threshold`` picks (8-bit uniform
quantization, bit-packed 28 bits per int32 word, plus a float32 min and max; or identity for
tensors of at most ``threshold`` elements), and the bytes of the encoded tensors are summed,
plus 4 bytes for the client's float32 weight. The zeroing and clipping wrappers' per-client
scalars (a few bytes) and any transport framing are not counted. Stock
``compression_aggregator()`` uses ``threshold=20000``: no tensor of ``cnn-fmnist`` (5,258
parameters, largest tensor 4,000) is above it, so nothing is quantized; ``quantize_all=True``
builds the same aggregator (same adaptive zeroing and clipping) with ``threshold=0``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedge.edge_client.errors import ArtifactError, ConfigError

STOCK_THRESHOLD = 20000  # the threshold compression_aggregator() passes to quantize_above_threshold
QUANT_BITS = 8
PARITY_TOL = 1e-4


@dataclass(frozen=True)
class AnchorConfig:
    """The federated setting of one anchor run (the simulator's settings of the same name)."""

    artifact: str
    devices: int = 100
    rounds: int = 20
    clients_per_round: int = 20
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 32
    seed: int = 0
    partition: str = "dirichlet:0.5"
    test_fraction: float = 0.2
    quantize_all: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ConfigError("devices, rounds, local_epochs and batch_size must be >= 1")
        if not 1 <= self.clients_per_round <= self.devices:
            raise ConfigError(
                f"clients_per_round must be in [1, {self.devices}], got {self.clients_per_round}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")

    @property
    def threshold(self) -> int:
        """Tensors with more elements than this are quantized."""
        return 0 if self.quantize_all else STOCK_THRESHOLD


def seeded_schedule(devices: int, rounds: int, per_round: int, seed: int) -> list[list[int]]:
    """Clients of every round, drawn without replacement by a seeded numpy generator."""
    rng = np.random.default_rng([seed, 0x7FF])
    return [
        sorted(int(i) for i in rng.choice(devices, per_round, replace=False)) for _ in range(rounds)
    ]


def check_schedule(schedule: Sequence[Sequence[int]], cfg: AnchorConfig) -> list[list[int]]:
    """Validate a per-round client list against ``cfg`` and return it as lists of ints.

    Raises
    ------
    ConfigError
        Wrong number of rounds, a client index out of range, or a repeated client.
    """
    if len(schedule) != cfg.rounds:
        raise ConfigError(f"schedule has {len(schedule)} rounds, config has {cfg.rounds}")
    out = []
    for r, clients in enumerate(schedule, 1):
        ids = [int(c) for c in clients]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= cfg.devices:
            raise ConfigError(
                f"schedule round {r}: need distinct client indices in [0, {cfg.devices}), got {ids}"
            )
        out.append(ids)
    return out


def client_arrays(
    cfg: AnchorConfig,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Per-device local train splits and the central test set, exactly as the simulator."""
    from fedge.firmware_sim.partition import parse_partition_spec, partition, split_local
    from fedge.model_export.datasets import load_fashion_mnist

    x_train, y_train, x_test, y_test = load_fashion_mnist()
    parts = partition(
        y_train, cfg.devices, parse_partition_spec(cfg.partition), cfg.seed, min_size=2
    )
    clients = []
    for i, idx in enumerate(parts):
        train_idx, _ = split_local(idx, cfg.test_fraction, (cfg.seed, i))
        clients.append((x_train[train_idx], y_train[train_idx]))
    return clients, (x_test, y_test)


def keras_cnn_fmnist(weights: Sequence[np.ndarray]) -> Any:
    """A Keras ``cnn-fmnist`` (see ``model_export.zoo.cnn_fmnist``) holding ``weights``."""
    import tensorflow as tf

    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.InputLayer(input_shape=(28, 28, 1)),
            layers.Conv2D(8, 3, padding="valid", activation="relu"),
            layers.AveragePooling2D(2, padding="valid"),
            layers.Conv2D(16, 3, padding="valid", activation="relu"),
            layers.AveragePooling2D(2, padding="valid"),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )
    model.set_weights(list(weights))
    return model


def _check_parity(model: Any, trainer: Any, x: np.ndarray) -> None:
    """Raise ArtifactError unless the Keras copy gives the artifact's logits."""
    ours = model(x, training=False).numpy()
    theirs = trainer.predict(x)
    gap = float(np.max(np.abs(ours - theirs)))
    if gap > PARITY_TOL:
        raise ArtifactError(
            f"the Keras cnn-fmnist differs from the artifact by {gap:.2e} in logits"
        )


def aggregator(quantize_all: bool) -> Any:
    """``compression_aggregator()``, or the same aggregator quantizing every tensor."""
    import tensorflow_federated as tff

    if not quantize_all:
        return tff.learning.compression_aggregator()
    agg = tff.aggregators
    inner = agg.MeanFactory(
        agg.EncodedSumFactory.quantize_above_threshold(quantization_bits=QUANT_BITS, threshold=0)
    )
    # The adaptive clipping and zeroing parameters of TFF 0.87's compression_aggregator().
    clip_norm = agg.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2
    )
    zero_norm = agg.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=10.0,
        target_quantile=0.98,
        learning_rate=math.log(10.0),
        multiplier=2.0,
        increment=1.0,
    )
    return agg.zeroing_factory(zero_norm, agg.clipping_factory(clip_norm, inner))


def encoded_update_bytes(shapes: Sequence[Sequence[int]], threshold: int) -> int:
    """Bytes of one client's update through TFF's encoders, plus its float32 weight."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

    rng = np.random.default_rng(0)
    total = 4
    for shape in shapes:
        n = int(np.prod(shape))
        encoder = (
            te.encoders.uniform_quantization(QUANT_BITS)
            if n > threshold
            else te.encoders.identity()
        )
        simple = te.encoders.as_simple_encoder(encoder, tf.TensorSpec(tuple(shape), tf.float32))
        encoded, _ = simple.encode(tf.constant(rng.normal(size=shape).astype(np.float32)))
        total += sum(int(t.numpy().nbytes) for t in tf.nest.flatten(encoded))
    return total


def stop_worker_binaries() -> int:
    """Terminate this process's ``worker_binary`` descendants (TFF's executor); return how many."""
    procs = [p for p in psutil.Process().children(recursive=True) if p.name() == "worker_binary"]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
    return len(procs)


def _client_dataset(
    cfg: AnchorConfig, clients: Sequence[tuple[np.ndarray, np.ndarray]]
) -> Callable[[int, int], Any]:
    """``dataset(i, rnd)``: client ``i``'s batches for round ``rnd``, reshuffled every epoch."""
    import tensorflow as tf

    def dataset(i: int, rnd: int) -> tf.data.Dataset:
        x, y = clients[i]
        return (
            tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
            .shuffle(
                len(x), seed=cfg.seed * 1_000_003 + rnd * 1009 + i, reshuffle_each_iteration=True
            )
            .batch(cfg.batch_size)
            .repeat(cfg.local_epochs)
        )

    return dataset


def _model_fn(initial: Sequence[np.ndarray], spec: Any) -> Callable[[], Any]:
    """TFF's model constructor: a fresh Keras ``cnn-fmnist`` holding ``initial``."""
    import tensorflow as tf
    import tensorflow_federated as tff

    def model_fn() -> Any:
        return tff.learning.models.from_keras_model(
            keras_cnn_fmnist(initial),
            input_spec=spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    return model_fn


def _run_rounds(
    process: Any,
    plan: Sequence[Sequence[int]],
    dataset: Callable[[int, int], Any],
    trainer: Any,
    test: tuple[np.ndarray, np.ndarray],
    per_device: int,
) -> list[dict[str, Any]]:
    """Every round of ``plan``: train, then evaluate the global model through the artifact."""
    x_test, y_test = test
    rounds = []
    state = process.initialize()
    for r, ids in enumerate(plan, 1):
        t0 = time.time()
        output = process.next(state, [dataset(i, r) for i in ids])
        state = output.state
        trainer.set_weights(
            [np.asarray(w, np.float32) for w in process.get_model_weights(state).trainable]
        )
        ev = trainer.evaluate(x_test, y_test)
        rounds.append(
            {
                "round": r,
                "accuracy": ev.accuracy,
                "loss": ev.loss,
                "selected": len(ids),
                "reported": len(ids),
                "dropped": 0,
                "uplink_bytes": per_device * len(ids),
                "downlink_bytes": 0,
                "duration_s": round(time.time() - t0, 3),
            }
        )
    return rounds


def run_anchor(
    cfg: AnchorConfig, schedule: Sequence[Sequence[int]] | None = None
) -> dict[str, Any]:
    """Train FedAvg with the compression aggregator; return a simulator-like summary.

    Parameters
    ----------
    cfg : AnchorConfig
        The federated setting (artifact directory, partition, rounds, epochs, lr...).
    schedule : list of lists of int, optional
        Device indices of every round; default: :func:`seeded_schedule`.

    Returns
    -------
    dict
        ``{"config", "params", "rounds": [{round, accuracy, loss, selected, reported,
        dropped, uplink_bytes, downlink_bytes, duration_s}], "final_accuracy",
        "uplink_bytes_per_device", "schedule", "wall_time_s"}``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_federated as tff

    from fedge.edge_client.artifact import load_artifact
    from fedge.edge_client.trainer import LocalTrainer

    t_start = time.time()
    plan = (
        check_schedule(schedule, cfg)
        if schedule is not None
        else seeded_schedule(cfg.devices, cfg.rounds, cfg.clients_per_round, cfg.seed)
    )
    trainer = LocalTrainer(load_artifact(Path(cfg.artifact)))
    if trainer.manifest.batch_size != cfg.batch_size:
        raise ConfigError(f"artifact batch size {trainer.manifest.batch_size} != {cfg.batch_size}")
    initial = trainer.get_weights()
    clients, (x_test, y_test) = client_arrays(cfg)
    _check_parity(keras_cnn_fmnist(initial), trainer, x_test[:64])
    tf.keras.utils.set_random_seed(cfg.seed)
    dataset = _client_dataset(cfg, clients)
    process = tff.learning.algorithms.build_weighted_fed_avg(
        _model_fn(initial, dataset(0, 0).element_spec),
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=cfg.lr),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
        model_aggregator=aggregator(cfg.quantize_all),
    )
    per_device = encoded_update_bytes([w.shape for w in initial], cfg.threshold)
    try:
        rounds = _run_rounds(process, plan, dataset, trainer, (x_test, y_test), per_device)
    finally:
        stop_worker_binaries()
    return {
        "config": asdict(cfg),
        "params": int(sum(w.size for w in initial)),
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"],
        "uplink_bytes_per_device": per_device,
        "schedule": plan,
        "wall_time_s": round(time.time() - t_start, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: read an AnchorConfig (+ optional ``schedule``) as JSON, write the summary as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        help='JSON: AnchorConfig fields, optionally "schedule": [[device, ...], ...]',
    )
    p.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    args = p.parse_args(argv)
    raw = json.loads(args.config.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{args.config}: expected a JSON object")
    schedule = raw.pop("schedule", None)
    try:
        cfg = AnchorConfig(**raw)
    except TypeError as exc:
        raise ConfigError(f"{args.config}: {exc}") from None
    summary = run_anchor(cfg, schedule)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
