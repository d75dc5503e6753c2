"""Parity with TensorFlow Federated: fedge FedAvg rounds vs TFF's ``build_weighted_fed_avg``.

Run ``python -m tools.bench.tff_parity [--devices 10] [--rounds 3] [--epochs 2] [--lr 0.1]``.

Both sides start from the same initial weights (read from the exported ``mlp-digits``
artifact), train on the same IID digits shards in the same order (fedge with
``shuffle = false``), with the same epochs, batch size and learning rates, and no
compression. fedge runs for real: a Mosquitto broker, a ``FedgeServer`` and one
``DeviceAgent`` per device training in tflite-runtime; its per-round global weights are read
back from the server's state directory. TFF runs the same rounds with a Keras model of the
same layers. The table gives, per round, the largest absolute difference between the two
global models and how far the model has moved from its initial weights.

Batching: fedge walks each epoch in batches and masks the last partial batch, so the TFF
client data is ``batch(B).repeat(E)`` (``repeat(E).batch(B)`` would mix epochs in one
batch). fedge weights a device by its example count n, TFF by the examples it trained on
(E * n): the same weights after normalisation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedge.edge_client.errors import ConfigError
from fedge.server.blobs import BlobStore
from fedge.server.job import (
    EvaluationConfig,
    JobConfig,
    SelectionConfig,
    ServerOptimizerConfig,
    TrainingConfig,
)
from fedge.server.store import SQLiteStore

MODULE = "tools.bench.tff_parity"
TFF_WORKER = "worker_binary"

Weights = list[np.ndarray]
Shard = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ParitySetup:
    """What both sides share: fleet size, rounds, local epochs and learning rates."""

    devices: int = 10
    rounds: int = 3
    epochs: int = 2
    client_lr: float = 0.1
    server_lr: float = 1.0


def parity_job(artifact: Path, setup: ParitySetup, *, name: str = "parity",
               fleet: str = "parity", max_example_weight: int = 10_000) -> JobConfig:
    """A FedAvg job in which every device trains in order, uncompressed, in every round.

    Raises
    ------
    ConfigError
        If the setup is invalid (a `JobConfig` checks itself when built).
    """
    n = setup.devices
    return JobConfig(
        name=name, fleet=fleet, artifact=artifact, rounds=setup.rounds, seed=1,
        selection=SelectionConfig(target_reports=n, over_selection=1.0, min_reports=n,
                                  selection_timeout_s=30.0, round_deadline_s=60.0,
                                  max_attempts=1, retry_window_s=1.0),
        training=TrainingConfig(local_epochs=setup.epochs, lr=setup.client_lr, shuffle=False,
                                max_example_weight=max_example_weight),
        optimizer=ServerOptimizerConfig(name="fedavg", lr=setup.server_lr),
        evaluation=EvaluationConfig(central_every=0),
    )


def iid_shards(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> list[Shard]:
    """Split ``(x, y)`` into ``n`` IID shards of near-equal size (seeded permutation)."""
    order = np.random.default_rng(seed).permutation(len(y))
    return [(x[idx], y[idx]) for idx in np.array_split(order, n)]


def committed_round_weights(state_dir: Path, job_name: str,
                            shapes: Sequence[tuple[int, ...]]) -> list[Weights]:
    """Global weights after each committed training round, read from a server's state.

    Raises
    ------
    ConfigError
        If the job is unknown, or its checkpoint is not its last committed round's weights.
    """
    from fedge.edge_client.weights import unpack_weights

    store = SQLiteStore(Path(state_dir) / "fedge.db")
    try:
        job = store.job(job_name)
        rows = [r for r in store.rounds(job_name, "train") if r["state"] == "committed"]
    finally:
        store.close()
    if job is None:
        raise ConfigError(f"no job {job_name!r} in {state_dir}")
    rows.sort(key=lambda r: int(r["round"]))
    if rows and job["weights_sha"] != rows[-1]["weights_sha"]:
        raise ConfigError(f"job {job_name!r}: checkpoint is not the last committed round's weights")
    blobs = BlobStore(Path(state_dir) / "blobs")
    return [unpack_weights(blobs.get(r["weights_sha"]), shapes) for r in rows]


def _is_dense_chain(shapes: Sequence[tuple[int, ...]]) -> bool:
    """Whether ``shapes`` are ``[in, out]`` kernels each followed by an ``[out]`` bias, chained."""
    kernels, biases = shapes[0::2], shapes[1::2]
    if not kernels or len(kernels) != len(biases):
        return False
    if any(len(k) != 2 or b != (k[1],) for k, b in zip(kernels, biases, strict=True)):
        return False
    return all(a[1] == b[0] for a, b in zip(kernels, kernels[1:], strict=False))


def _keras_mlp(shapes: Sequence[tuple[int, ...]]) -> Any:
    """Dense layers (ReLU between them, logits out) matching ``[kernel, bias, ...]`` shapes."""
    import tensorflow as tf

    kernels = shapes[0::2]
    layers: list[Any] = [tf.keras.layers.InputLayer(input_shape=(kernels[0][0],))]
    for i, kernel in enumerate(kernels):
        last = i == len(kernels) - 1
        layers.append(tf.keras.layers.Dense(kernel[1], activation=None if last else "relu"))
    return tf.keras.Sequential(layers)


def tff_fedavg(initial: Sequence[np.ndarray], shards: Sequence[Shard], setup: ParitySetup,
               batch_size: int) -> list[Weights]:
    """Run ``setup.rounds`` rounds of TFF's weighted FedAvg; global weights after each round.

    The model is an MLP (Dense, ReLU, ..., Dense logits) whose layer sizes come from
    ``initial`` (``[kernel0, bias0, kernel1, bias1, ...]``, kernels ``[in, out]``). Clients
    use SGD with ``setup.client_lr`` on the mean sparse cross-entropy of each batch, the
    server SGD with ``setup.server_lr``. TFF leaves a ``worker_binary`` child process
    running: call :func:`stop_tff_workers` when done.

    Raises
    ------
    ConfigError
        If ``initial`` is not kernel/bias pairs of a chain of dense layers.
    """
    shapes = [tuple(w.shape) for w in initial]
    if not _is_dense_chain(shapes):
        raise ConfigError(f"tff_fedavg needs [kernel, bias] pairs of chained dense layers, "
                          f"got shapes {shapes}")
    import tensorflow as tf
    import tensorflow_federated as tff

    spec = (tf.TensorSpec([None, shapes[0][0]], tf.float32), tf.TensorSpec([None], tf.int32))

    def model_fn() -> Any:
        return tff.learning.models.from_keras_model(
            _keras_mlp(shapes), input_spec=spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=setup.client_lr),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=setup.server_lr),
    )
    state = process.initialize()
    state = process.set_model_weights(state, tff.learning.models.ModelWeights(
        trainable=[np.asarray(w, np.float32) for w in initial], non_trainable=[]))
    data = [tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y.astype(np.int32)))
            .batch(batch_size).repeat(setup.epochs) for x, y in shards]
    out: list[Weights] = []
    for _ in range(setup.rounds):
        state = process.next(state, data).state
        out.append([np.asarray(w) for w in process.get_model_weights(state).trainable])
    return out


def stop_tff_workers(timeout_s: float = 10.0) -> int:
    """Terminate (then kill) this process's ``worker_binary`` children; return how many."""
    workers = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == TFF_WORKER:
                workers.append(child)
        except psutil.NoSuchProcess:
            continue
    for proc in workers:
        proc.terminate()
    _, alive = psutil.wait_procs(workers, timeout=timeout_s)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=timeout_s)
    return len(workers)


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute element-wise difference between two weight lists of equal shapes."""
    if [x.shape for x in a] != [y.shape for y in b]:
        raise ConfigError(f"weight shapes differ: {[x.shape for x in a]} vs {[y.shape for y in b]}")
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ the benchmark's fedge run


async def _run_fedge_async(job: JobConfig, shards: Sequence[Shard], workdir: Path,
                           broker_url: str, timeout_s: float) -> str:
    from fedge.edge_client.agent import DeviceAgent, LocalData, TrainerCache
    from fedge.edge_client.config import parse_device_config
    from fedge.edge_client.data import save_npz_dataset
    from fedge.edge_client.signing import load_or_create_signing_key, load_public_key
    from fedge.server.app import FedgeServer
    from fedge.server.settings import ServerSettings

    key_file = workdir / "server" / "signing.key"
    load_or_create_signing_key(key_file)
    pub = key_file.with_suffix(".pub")
    server = FedgeServer(job, ServerSettings(state_dir=workdir / "server", broker_url=broker_url,
                                             http_port=0))
    trainers, agents = TrainerCache(), []
    for i, (x, y) in enumerate(shards):
        folder = workdir / "devices" / f"dev-{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_npz_dataset(folder / "train.npz", x, y)
        cfg = parse_device_config({
            "device": {"id": f"dev-{i:03d}", "fleet": job.fleet, "state_dir": "state"},
            "broker": {"url": broker_url}, "data": {"train": "train.npz"},
            "server": {"signing_public_key": str(pub)}}, folder)
        agents.append(DeviceAgent(cfg, LocalData(x, y), load_public_key(pub.read_bytes()),
                                  trainers=trainers, checkin_timeout_s=20.0, seed=i))
    server_stop, agents_stop = asyncio.Event(), asyncio.Event()
    server_task = asyncio.create_task(server.run(server_stop))
    agent_tasks = [asyncio.create_task(a.run(agents_stop)) for a in agents]
    try:
        return await asyncio.wait_for(asyncio.shield(server_task), timeout=timeout_s)
    finally:
        server_stop.set()
        agents_stop.set()
        await asyncio.gather(server_task, *agent_tasks, return_exceptions=True)


def run_fedge(job: JobConfig, shards: Sequence[Shard], workdir: Path, broker_url: str,
              timeout_s: float = 300.0) -> str:
    """Run ``job`` with a real server and one real agent per shard; return the job's status."""
    return asyncio.run(_run_fedge_async(job, shards, workdir, broker_url, timeout_s))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description="fedge FedAvg vs TFF, per round")
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1, help="client learning rate")
    p.add_argument("--server-lr", type=float, default=1.0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both sides and print the per-round differences."""
    args = _parse_args(argv)
    setup = ParitySetup(devices=args.devices, rounds=args.rounds, epochs=args.epochs,
                        client_lr=args.lr, server_lr=args.server_lr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedge.edge_client.artifact import load_artifact
    from fedge.edge_client.trainer import LocalTrainer
    from fedge.model_export import export_model
    from fedge.model_export.datasets import load_digits_arrays
    from fedge.tools.bench._common import Mosquitto, command_line, machine_load, print_table

    x_tr, y_tr, _, _ = load_digits_arrays(test_fraction=0.25, seed=0)
    shards = iid_shards(x_tr, y_tr, setup.devices)
    with tempfile.TemporaryDirectory(prefix="fedge-tff-parity-") as tmp:
        work = Path(tmp)
        export_model("mlp-digits", work / "artifact", batch_size=32, seed=0)
        artifact = load_artifact(work / "artifact")
        initial = LocalTrainer(artifact).get_weights()
        shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        job = parity_job(work / "artifact", setup)
        t0 = time.perf_counter()
        with Mosquitto(work / "broker") as broker:
            status = run_fedge(job, shards, work / "run", broker.url)
        fedge_s = time.perf_counter() - t0
        if status != "finished":
            raise ConfigError(f"the fedge job ended {status!r}, not 'finished'")
        fedge = committed_round_weights(work / "run" / "server", job.name, shapes)
    t0 = time.perf_counter()
    try:
        tff_rounds = tff_fedavg(initial, shards, setup, artifact.manifest.batch_size)
    finally:
        stop_tff_workers()
    tff_s = time.perf_counter() - t0
    rows = [(r + 1, max_abs_diff(f, t), max_abs_diff(t, initial))
            for r, (f, t) in enumerate(zip(fedge, tff_rounds, strict=True))]
    print_table(
        "fedge FedAvg vs TFF build_weighted_fed_avg (mlp-digits, IID digits shards)",
        ["round", "max |fedge - TFF|", "max |TFF - initial|"], rows, command_line(MODULE),
        note=(f"{setup.devices} devices, {setup.epochs} epochs, batch "
              f"{artifact.manifest.batch_size}, client lr {setup.client_lr}, server lr "
              f"{setup.server_lr}, codec none; fedge {fedge_s:.1f} s (server + agents + "
              f"broker), TFF {tff_s:.1f} s (with import); {machine_load()}"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
