"""Benchmark: on-device training steps/s in tflite-runtime vs TensorFlow 2.14, same models.

Run ``python -m tools.bench.train_speed [--seconds S] [--models a,b]``.

* Every (runtime, model) pair runs in its own fresh process, so its memory is its own and
  TensorFlow's thread settings apply before TF starts.
* tflite-runtime: ``LocalTrainer.fit`` on the exported artifact, ``num_threads=1``: the
  device's real loop (seeded shuffling, batch copies, mask, the ``train`` signature).
  Steps/s is timed between the first and the last step's progress callback, so the
  accuracy pass at the end of ``fit`` is not counted. The worker never imports TF.
* TensorFlow: a ``tf.function`` SGD step on ``tf.Variable``s with the standard ops
  (``tf.nn.conv2d``, ``tf.nn.relu``, ``tf.nn.avg_pool2d``, sparse softmax cross-entropy,
  autodiff), same model and batch, batches already on the TF side (TF's best case);
  once with intra/inter-op threads = 1 and once with TF's default threads.
* Memory: peak RSS of the worker process (``VmHWM``) and its delta over the RSS right
  after the runtime was imported (model, interpreter or graph, and training).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("mlp-digits", "cnn-fmnist", "transfer-fmnist")
BATCH = 32
WARMUP = 20
DATA_BATCHES = 64  # both runtimes cycle through the same 64 random batches
MAX_STEPS = 200_000


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _batches(input_shape: tuple[int, ...], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, *input_shape)).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32)


def _worker_tflite(artifact_dir: Path, seconds: float) -> dict[str, Any]:
    from edge_client.artifact import load_artifact
    from edge_client.runtime import runtime_name, runtime_version
    from edge_client.trainer import LocalTrainer

    base = _rss_mb()
    trainer = LocalTrainer(load_artifact(artifact_dir), num_threads=1)
    shape = trainer.manifest.input_shape
    trainer.fit(*_batches(shape, WARMUP * BATCH, 1), epochs=1, lr=0.01, seed=0)
    # time a short probe run, then size the real run to about `seconds`
    marks: dict[int, float] = {}

    def progress(step: int, total: int) -> None:
        if step == 1 or step == total:
            marks[step] = time.perf_counter()

    probe = 50
    trainer.fit(*_batches(shape, probe * BATCH, 2), epochs=1, lr=0.01, seed=0, progress=progress)
    rate = (probe - 1) / (marks[probe] - marks[1])
    steps = int(min(MAX_STEPS, max(100, rate * seconds)))
    marks.clear()
    x, y = _batches(shape, DATA_BATCHES * BATCH, 3)
    epochs = -(-steps // DATA_BATCHES)
    trainer.fit(x, y, epochs=epochs, lr=0.01, seed=0, max_steps=steps, progress=progress)
    return {
        "steps_per_s": (steps - 1) / (marks[steps] - marks[1]),
        "steps": steps,
        "peak_mb": _peak_mb(),
        "delta_mb": _peak_mb() - base,
        "runtime": f"{runtime_name()} {runtime_version()}",
    }


def _worker_tf(spec_file: Path, seconds: float, threads: int) -> dict[str, Any]:
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    from model_export import layers as L

    base = _rss_mb()
    spec = pickle.loads(spec_file.read_bytes())
    params = [tf.Variable(p) for p in spec.init_params(0)]
    shape = [BATCH, *spec.input_shape]

    @tf.function(input_signature=[tf.TensorSpec(shape), tf.TensorSpec([BATCH], tf.int32)])
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = spec.reference_logits(x, params)
            loss = tf.reduce_mean(L.reference_cross_entropy(logits, y))
        for v, g in zip(params, tape.gradient(loss, params), strict=True):
            v.assign_sub(0.01 * g)
        return loss

    xs, ys = _batches(spec.input_shape, DATA_BATCHES * BATCH, 3)
    batches = [
        (tf.constant(xs[i * BATCH : (i + 1) * BATCH]), tf.constant(ys[i * BATCH : (i + 1) * BATCH]))
        for i in range(DATA_BATCHES)
    ]
    for i in range(WARMUP):
        step(*batches[i % DATA_BATCHES])
    steps, start = 0, time.perf_counter()
    while steps < MAX_STEPS and time.perf_counter() - start < seconds:
        step(*batches[steps % DATA_BATCHES]).numpy()
        steps += 1
    elapsed = time.perf_counter() - start
    return {
        "steps_per_s": steps / elapsed,
        "steps": steps,
        "peak_mb": _peak_mb(),
        "delta_mb": _peak_mb() - base,
        "runtime": f"tensorflow {tf.__version__}",
    }


def _run_worker(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.train_speed", "--worker", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _prepare(models: list[str], root: Path) -> dict[str, dict[str, Any]]:
    from model_export import build, export_spec

    out = {}
    for name in models:
        spec = build(name, seed=0)
        manifest = export_spec(spec, root / name, batch_size=BATCH, seed=0)
        (root / f"{name}.spec.pkl").write_bytes(pickle.dumps(spec))
        out[name] = {
            "params": manifest.param_count,
            "frozen": manifest.frozen_param_count,
            "kb": (root / name / "model.tflite").stat().st_size / 1024,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed run per measurement")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, path, seconds = args.worker[0], Path(args.worker[1]), float(args.worker[2])
        if kind == "tflite":
            result = _worker_tflite(path, seconds)
        else:
            result = _worker_tf(path, seconds, threads=int(args.worker[3]))
        print(json.dumps(result))
        return

    from rich.console import Console
    from rich.table import Table

    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    console = Console(width=150)
    command = "python -m tools.bench.train_speed " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        root = Path(tmp)
        info = _prepare(models, root)
        for name in models:
            secs = str(args.seconds)
            lite = _run_worker(["tflite", str(root / name), secs])
            tf1 = _run_worker(["tf", str(root / f"{name}.spec.pkl"), secs, "1"])
            tfd = _run_worker(["tf", str(root / f"{name}.spec.pkl"), secs, "0"])
            rows.append((name, info[name], lite, tf1, tfd))
    lite_name, tf_name = rows[0][2]["runtime"], rows[0][3]["runtime"]
    table = Table(title=f"Training steps/s at batch {BATCH}: {lite_name} vs {tf_name}")
    for col in (
        "model",
        "params (frozen)",
        "artifact KB",
        "tflite steps/s",
        "TF steps/s",
        "ratio",
        "TF steps/s, default threads",
        "tflite RSS MB (Δ)",
        "TF RSS MB (Δ)",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, meta, lite, tf1, tfd in rows:
        table.add_row(
            name,
            f"{meta['params']:,} ({meta['frozen']:,})",
            f"{meta['kb']:.1f}",
            f"{lite['steps_per_s']:,.0f}",
            f"{tf1['steps_per_s']:,.0f}",
            f"{lite['steps_per_s'] / tf1['steps_per_s']:.2f}",
            f"{tfd['steps_per_s']:,.0f}",
            f"{lite['peak_mb']:.0f} ({lite['delta_mb']:+.1f})",
            f"{tf1['peak_mb']:.0f} ({tf1['delta_mb']:+.1f})",
        )
    console.print(table)
    console.print(
        "ratio = tflite / TF, both single-threaded. tflite = LocalTrainer.fit (device loop); "
        "TF = tf.function step, standard ops. RSS = worker peak RSS (VmHWM) and its delta "
        "over the RSS after importing the runtime."
    )
    console.print(f"command: {command}")


if __name__ == "__main__":
    main()
