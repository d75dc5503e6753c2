"""Local training through the artifact's signatures: the device's hot loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.artifact import Artifact, Manifest
from fedge.edge_client.errors import ArtifactError, ConfigError, DataError


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :meth:`LocalTrainer.fit`.

    ``loss`` is the mean training loss over the examples of the last (possibly partial)
    epoch, as seen during that epoch; ``accuracy`` is the trained model's accuracy on
    those same examples; ``wall_time_s`` covers the whole call.
    """

    loss: float
    accuracy: float
    examples: int
    steps: int
    wall_time_s: float


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and accuracy over ``examples`` examples."""

    loss: float
    accuracy: float
    examples: int


class LocalTrainer:
    """Train, evaluate and predict with one artifact in the TFLite interpreter.

    Parameters
    ----------
    artifact
        A validated artifact (see :func:`edge_client.artifact.load_artifact`).
    num_threads
        Interpreter threads.
    xnnpack
        Run supported ops through the interpreter's XNNPACK delegate (the default).
    """

    def __init__(self, artifact: Artifact, num_threads: int = 1, *, xnnpack: bool = True) -> None:
        self.manifest: Manifest = artifact.manifest
        self._model = artifact.load(num_threads, xnnpack=xnnpack)
        m = self.manifest
        b = m.batch_size
        self._x = np.zeros((b, *m.input_shape), np.float32)
        self._y = np.zeros(b, np.int32)
        self._mask = np.ones(b, np.float32)
        self._names = [t.name for t in m.tensors]

    # ------------------------------------------------------------ weights

    def get_weights(self) -> list[Array]:
        """Current trainable tensors, ordered as ``manifest.tensors``."""
        sig = self._model.get_weights
        sig.invoke()
        return [sig.get(name) for name in self._names]

    def set_weights(self, weights: Sequence[Array]) -> None:
        """Replace the trainable tensors.

        Raises
        ------
        ArtifactError
            Wrong count, shape or dtype, or non-finite values (nothing is changed).
        """
        specs = self.manifest.tensors
        if len(weights) != len(specs):
            raise ArtifactError(f"set_weights needs {len(specs)} tensors, got {len(weights)}")
        for spec, w in zip(specs, weights, strict=True):
            if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.shape != spec.shape:
                got = f"{w.dtype}{list(w.shape)}" if isinstance(w, np.ndarray) else type(w).__name__
                raise ArtifactError(
                    f"weight {spec.name} must be float32{list(spec.shape)}, got {got}"
                )
            if not np.isfinite(w).all():
                raise ArtifactError(f"weight {spec.name} has NaN or infinite values")
        sig = self._model.set_weights
        for spec, w in zip(specs, weights, strict=True):
            sig.set(spec.name, np.ascontiguousarray(w))
        sig.invoke()

    # ------------------------------------------------------------ checks

    def _check(self, x: Array, y: Array | None) -> int:
        m = self.manifest
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(f"x must be a float32 numpy array, got {got}")
        if x.ndim != len(m.input_shape) + 1 or x.shape[1:] != m.input_shape:
            raise DataError(
                f"x must have shape [N, {', '.join(map(str, m.input_shape))}], got {list(x.shape)}"
            )
        if len(x) == 0:
            raise DataError("no examples (x is empty)")
        if not np.isfinite(x).all():
            raise DataError("x has NaN or infinite values")
        if y is not None:
            if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer):
                raise DataError("y must be a numpy array of integer labels")
            if y.shape != (len(x),):
                raise DataError(f"y must have shape [{len(x)}], got {list(y.shape)}")
            if y.min() < 0 or y.max() >= m.num_classes:
                raise DataError(
                    f"labels must be in [0, {m.num_classes}), got {int(y.min())}..{int(y.max())}"
                )
        return len(x)

    # ------------------------------------------------------------ training

    def fit(
        self,
        x: Array,
        y: Array,
        *,
        epochs: int,
        lr: float,
        seed: int,
        max_steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        shuffle: bool = True,
    ) -> TrainResult:
        """Run SGD through the ``train`` signature.

        Each epoch shuffles the examples (seeded by ``seed``; in order with ``shuffle=False``) and walks them in batches
        of ``manifest.batch_size``; the last partial batch is padded and masked.

        Parameters
        ----------
        x, y
            float32 ``[N, *input_shape]`` and integer labels ``[N]``.
        epochs
            Passes over the data (>= 1).
        lr
            SGD learning rate (> 0).
        seed
            Shuffling seed.
        max_steps
            Stop after this many batches even mid-epoch.
        progress
            Called as ``progress(step, total_steps)`` after every step.

        Raises
        ------
        DataError
            Wrong shape or dtype, NaN, labels out of range.
        ConfigError
            Invalid ``epochs``, ``lr`` or ``max_steps``.
        """
        start = time.perf_counter()
        n = self._check(x, y)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be an int >= 1, got {epochs!r}")
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
        if max_steps is not None and (
            isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
        ):
            raise ConfigError(f"max_steps must be an int >= 1 or None, got {max_steps!r}")
        b = self.manifest.batch_size
        per_epoch = -(-n // b)
        total = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
        y32 = y.astype(np.int32, copy=False)
        xb, yb, mask = self._x, self._y, self._mask
        sig = self._model.train
        set_x, set_y, set_mask, set_lr = (sig.setter(k) for k in ("x", "y", "mask", "lr"))
        invoke, get_loss = sig.invoker(), sig.getter("loss")
        lr32 = np.float32(lr)
        rng = np.random.default_rng(seed)
        steps = 0
        loss_sum = 0.0
        seen = np.arange(0)
        while steps < total:
            order = rng.permutation(n) if shuffle else np.arange(n)
            loss_sum, done = 0.0, 0
            for lo in range(0, n, b):
                if steps == total:
                    break
                idx = order[lo : lo + b]
                k = len(idx)
                if k == b:
                    np.take(x, idx, axis=0, out=xb)
                    np.take(y32, idx, out=yb)
                else:
                    np.take(x, idx, axis=0, out=xb[:k])
                    np.take(y32, idx, out=yb[:k])
                    xb[k:] = 0.0
                    yb[k:] = 0
                    mask[k:] = 0.0
                set_x(xb)
                set_y(yb)
                set_mask(mask)
                set_lr(lr32)
                invoke()
                loss_sum += float(get_loss()) * k
                done += k
                steps += 1
                if k != b:
                    mask[:] = 1.0
                if progress is not None:
                    progress(steps, total)
            seen = order[:done]
        examples = len(seen)
        accuracy = self._run_eval(x[seen], y32[seen]).accuracy
        return TrainResult(
            loss=loss_sum / examples,
            accuracy=accuracy,
            examples=examples,
            steps=steps,
            wall_time_s=time.perf_counter() - start,
        )

    # ------------------------------------------------------------ evaluation

    def evaluate(self, x: Array, y: Array) -> EvalResult:
        """Mean loss and accuracy over ``(x, y)`` via the ``evaluate`` signature.

        Raises
        ------
        DataError
            Wrong shape or dtype, NaN, labels out of range.
        """
        self._check(x, y)
        return self._run_eval(x, y.astype(np.int32, copy=False))

    def _run_eval(self, x: Array, y: Array) -> EvalResult:
        n, b = len(x), self.manifest.batch_size
        sig = self._model.evaluate
        set_x, set_y, set_mask = (sig.setter(k) for k in ("x", "y", "mask"))
        invoke, get_loss, get_correct = sig.invoker(), sig.getter("loss"), sig.getter("correct")
        xb, yb, mask = self._x, self._y, self._mask
        loss = correct = 0.0
        for lo in range(0, n, b):
            k = min(b, n - lo)
            if k == b:
                set_x(np.ascontiguousarray(x[lo : lo + b]))
                set_y(np.ascontiguousarray(y[lo : lo + b]))
            else:
                xb[:k], yb[:k], xb[k:], yb[k:], mask[k:] = x[lo:], y[lo:], 0.0, 0, 0.0
                set_x(xb)
                set_y(yb)
            set_mask(mask)
            invoke()
            loss += float(get_loss())
            correct += float(get_correct())
            mask[:] = 1.0
        return EvalResult(loss=loss / n, accuracy=correct / n, examples=n)

    def predict(self, x: Array) -> Array:
        """Logits ``[N, num_classes]`` via the ``infer`` signature.

        Raises
        ------
        DataError
            Wrong shape or dtype, or NaN.
        """
        n = self._check(x, None)
        b = self.manifest.batch_size
        sig = self._model.infer
        set_x, invoke, get_logits = sig.setter("x"), sig.invoker(), sig.getter("logits")
        out = np.empty((n, self.manifest.num_classes), np.float32)
        xb = self._x
        for lo in range(0, n, b):
            k = min(b, n - lo)
            if k == b:
                set_x(np.ascontiguousarray(x[lo : lo + b]))
            else:
                xb[:k], xb[k:] = x[lo:], 0.0
                set_x(xb)
            invoke()
            out[lo : lo + k] = get_logits()[:k]
        return out
