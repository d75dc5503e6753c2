"""Benchmark: on-device training steps/s in tflite-runtime vs TensorFlow 2.14, same models.

Run ``python -m tools.bench.train_speed [--seconds S] [--rounds R] [--models a,b]``.

* Every (runtime, model) pair runs in its own fresh process, so its memory is its own and
  TensorFlow's thread settings apply before TF starts. The workers run in ``--rounds``
  alternating rounds (tflite, TF 1 thread, TF default threads, tflite without XNNPACK)
  and each column keeps its best round, so a burst of load from other processes on a
  shared machine hits both runtimes alike.
* tflite-runtime: ``LocalTrainer.fit`` on the exported artifact, ``num_threads=1``, with
  the interpreter's XNNPACK delegate (the device default; one column without it): the
  device's real loop (seeded shuffling, batch copies, mask, the ``train`` signature).
  Steps/s is timed between the first and the last step's progress callback, so the
  accuracy pass at the end of ``fit`` is not counted. The worker never imports TF.
* TensorFlow: a ``tf.function`` SGD step (XLA off) on ``tf.Variable``s with the standard
  ops (``tf.nn.conv2d``, ``tf.nn.relu``, ``tf.nn.avg_pool2d``, sparse softmax
  cross-entropy, autodiff), same model and batch, batches already on the TF side (TF's
  best case); once with intra/inter-op threads = 1 and once with TF's default threads.
* Two clocks: wall time, and the worker's CPU time (all its threads). On an idle machine
  a single-threaded run's CPU rate equals its wall rate; on a loaded one the CPU rate is
  the stable measure, so the single-thread ratio is given for both.
* Memory: peak RSS of the worker process (``VmHWM``) and its delta over the RSS right
  after the runtime was imported (model, interpreter or graph, and training).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported at run time only outside the workers, whose memory is measured
    from rich.console import Console
    from rich.table import Table

MODELS = ("mlp-digits", "cnn-fmnist", "transfer-fmnist")
BATCH = 32
WARMUP = 20
DATA_BATCHES = 64  # both runtimes cycle through the same 64 random batches
MAX_STEPS = 200_000
# worker kinds, in the order each round runs them: (kind, extra argument)
WORKERS = (("tflite", "xnnpack"), ("tf", "1"), ("tf", "0"), ("tflite", "builtin"))


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


def _worker_tflite(artifact_dir: Path, seconds: float, xnnpack: bool) -> dict[str, Any]:
    from fedge.edge_client.artifact import load_artifact
    from fedge.edge_client.runtime import runtime_name, runtime_version
    from fedge.edge_client.trainer import LocalTrainer

    base = _rss_mb()
    trainer = LocalTrainer(load_artifact(artifact_dir), num_threads=1, xnnpack=xnnpack)
    shape = trainer.manifest.input_shape
    trainer.fit(*_batches(shape, WARMUP * BATCH, 1), epochs=1, lr=0.01, seed=0)
    # time a short probe run, then size the real run to about `seconds`
    marks: dict[int, tuple[float, float]] = {}

    def progress(step: int, total: int) -> None:
        if step == 1 or step == total:
            marks[step] = (time.perf_counter(), time.process_time())

    probe = 50
    trainer.fit(*_batches(shape, probe * BATCH, 2), epochs=1, lr=0.01, seed=0, progress=progress)
    rate = (probe - 1) / (marks[probe][0] - marks[1][0])
    steps = int(min(MAX_STEPS, max(100, rate * seconds)))
    marks.clear()
    x, y = _batches(shape, DATA_BATCHES * BATCH, 3)
    epochs = -(-steps // DATA_BATCHES)
    trainer.fit(x, y, epochs=epochs, lr=0.01, seed=0, max_steps=steps, progress=progress)
    return {
        "steps_per_s": (steps - 1) / (marks[steps][0] - marks[1][0]),
        "steps_per_cpu_s": (steps - 1) / (marks[steps][1] - marks[1][1]),
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
    from fedge.model_export import layers as L

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
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while steps < MAX_STEPS and time.perf_counter() - start < seconds:
        step(*batches[steps % DATA_BATCHES]).numpy()
        steps += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "steps_per_s": steps / elapsed,
        "steps_per_cpu_s": steps / cpu,
        "steps": steps,
        "peak_mb": _peak_mb(),
        "delta_mb": _peak_mb() - base,
        "runtime": f"tensorflow {tf.__version__}",
    }


def _run_worker(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "fedge.tools.bench.train_speed", "--worker", *args],
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
    from fedge.model_export import build, export_spec

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


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest CPU-time rate, with the best wall rate of all rounds."""
    best = dict(max(results, key=lambda r: r["steps_per_cpu_s"]))
    best["steps_per_s"] = max(r["steps_per_s"] for r in results)
    return best


def _measure(name: str, root: Path, seconds: float, rounds: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {f"{k}:{a}": [] for k, a in WORKERS}
    for _ in range(rounds):
        for kind, arg in WORKERS:
            target = root / name if kind == "tflite" else root / f"{name}.spec.pkl"
            runs[f"{kind}:{arg}"].append(_run_worker([kind, str(target), str(seconds), arg]))
    return {key: _best(results) for key, results in runs.items()}


TABLE_COLUMNS = (
    "model",
    "params (frozen)",
    "artifact KB",
    "tflite steps/s",
    "TF steps/s",
    "ratio",
    "tflite steps/CPU-s",
    "TF steps/CPU-s",
    "ratio (CPU)",
    "TF steps/s, default threads",
    "tflite no XNNPACK steps/CPU-s",
    "tflite RSS MB (Δ)",
    "TF RSS MB (Δ)",
)


def _run_as_worker(worker: list[str]) -> None:
    """``--worker KIND PATH SECONDS ARG``: measure one runtime, print the result as JSON."""
    kind, path, seconds, arg = worker
    if kind == "tflite":
        result = _worker_tflite(Path(path), float(seconds), xnnpack=arg == "xnnpack")
    else:
        result = _worker_tf(Path(path), float(seconds), threads=int(arg))
    print(json.dumps(result))


def _table(rows: list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]) -> Table:
    """The rich table: one row per model, tflite against TF."""
    from rich.table import Table

    lite_name = rows[0][2]["tflite:xnnpack"]["runtime"]
    tf_name = rows[0][2]["tf:1"]["runtime"]
    table = Table(title=f"Training steps/s at batch {BATCH}: {lite_name} vs {tf_name}")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, meta, r in rows:
        lite, tf1, tfd, plain = r["tflite:xnnpack"], r["tf:1"], r["tf:0"], r["tflite:builtin"]
        table.add_row(
            name,
            f"{meta['params']:,} ({meta['frozen']:,})",
            f"{meta['kb']:.1f}",
            f"{lite['steps_per_s']:,.0f}",
            f"{tf1['steps_per_s']:,.0f}",
            f"{lite['steps_per_s'] / tf1['steps_per_s']:.2f}",
            f"{lite['steps_per_cpu_s']:,.0f}",
            f"{tf1['steps_per_cpu_s']:,.0f}",
            f"{lite['steps_per_cpu_s'] / tf1['steps_per_cpu_s']:.2f}",
            f"{tfd['steps_per_s']:,.0f}",
            f"{plain['steps_per_cpu_s']:,.0f}",
            f"{lite['peak_mb']:.0f} ({lite['delta_mb']:+.1f})",
            f"{tf1['peak_mb']:.0f} ({tf1['delta_mb']:+.1f})",
        )
    return table


def _print_notes(
    console: Console, load_before: tuple[float, ...], load_after: tuple[float, ...], command: str
) -> None:
    """What the columns mean, the machine load before and after, and the command."""
    console.print(
        "ratio = tflite / TF, both single-threaded (wall clock, and CPU time of the worker). "
        "tflite = LocalTrainer.fit (device loop) with XNNPACK; TF = tf.function step, "
        "standard ops. Best of the alternating rounds. RSS = worker peak RSS (VmHWM) and "
        "its delta over the RSS after importing the runtime."
    )
    console.print(
        f"load average (1, 5, 15 min) on {os.cpu_count()} CPUs: before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}; after "
        f"{', '.join(f'{v:.2f}' for v in load_after)}"
    )
    console.print(f"command: {command}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed run per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _run_as_worker(args.worker)
        return

    from rich.console import Console

    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")
    console = Console(width=170)
    command = "python -m tools.bench.train_speed " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        root = Path(tmp)
        info = _prepare(models, root)
        for name in models:
            rows.append((name, info[name], _measure(name, root, args.seconds, args.rounds)))
    load_after = os.getloadavg()
    console.print(_table(rows))
    _print_notes(console, load_before, load_after, command)


if __name__ == "__main__":
    main()
