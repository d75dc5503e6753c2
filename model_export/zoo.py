"""Model zoo: model specifications built from the layer library, registered by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from fedge.edge_client.artifact import TensorSpec
from fedge.edge_client.errors import ArtifactError
from fedge.model_export import layers as L
from fedge.model_export.datasets import FASHION_MNIST_ROOT, load_fashion_mnist

Builder = Callable[[int], "ModelSpec"]
_REGISTRY: dict[str, Builder] = {}


@dataclass(frozen=True, eq=False)
class FrozenStack:
    """Inference-only layers in front of the trainable ones, stored as int8 + scales.

    Kernels (rank >= 2) are quantized per output channel; biases stay float32.
    """

    layers: tuple[L.Layer, ...]
    params: tuple[tuple[np.ndarray, ...], ...]

    def quantized(self) -> list[list[tuple[np.ndarray, np.ndarray] | np.ndarray]]:
        """Per layer, ``(int8, scale)`` for kernels and float32 arrays for biases."""
        return [
            [L.quantize_per_channel(p) if p.ndim >= 2 else p for p in layer_params]
            for layer_params in self.params
        ]

    @property
    def param_count(self) -> int:
        """Number of frozen values."""
        return sum(p.size for layer_params in self.params for p in layer_params)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A trainable model: optional frozen stack, then trainable layers, ending in logits."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[L.Layer, ...]
    frozen: FrozenStack | None = None
    initial_params: tuple[np.ndarray, ...] | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.name or self.num_classes < 2 or self.batch_size < 1 or not self.input_shape:
            raise ArtifactError(
                f"model {self.name!r}: needs a name, num_classes >= 2, batch_size >= 1 "
                f"and an input shape (got {self.num_classes}, {self.batch_size}, "
                f"{self.input_shape})"
            )
        shape = self.feature_shape()
        for layer in self.layers:
            shape = layer.output_shape(shape)
        if shape != (self.num_classes,):
            raise ArtifactError(
                f"model {self.name!r} ends in shape {shape}, expected ({self.num_classes},) logits"
            )
        if not self.tensor_specs():
            raise ArtifactError(f"model {self.name!r} has no trainable parameters")
        if self.initial_params is not None:
            _check_params(self.tensor_specs(), self.initial_params)

    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example after the frozen stack (the input shape if none)."""
        shape = self.input_shape
        for layer in self.frozen.layers if self.frozen else ():
            shape = layer.output_shape(shape)
        return shape

    def _layer_shapes(self) -> list[tuple[L.Layer, tuple[int, ...]]]:
        out, shape = [], self.feature_shape()
        for layer in self.layers:
            out.append((layer, shape))
            shape = layer.output_shape(shape)
        return out

    def tensor_specs(self) -> list[TensorSpec]:
        """Trainable tensors in order, named ``<kind>_<index of that kind>_<param>``."""
        counts: dict[str, int] = {}
        specs = []
        for layer, shape in self._layer_shapes():
            params = layer.params(shape)
            if not params:
                continue
            index = counts.get(layer.kind, 0)
            counts[layer.kind] = index + 1
            specs += [TensorSpec(f"{layer.kind}_{index}_{p.suffix}", p.shape) for p in params]
        return specs

    def init_params(self, seed: int) -> list[np.ndarray]:
        """``initial_params`` if set, else a seeded Glorot initialisation."""
        if self.initial_params is not None:
            return [p.copy() for p in self.initial_params]
        rng = np.random.default_rng(seed)
        out: list[np.ndarray] = []
        for layer, shape in self._layer_shapes():
            out += layer.init_params(shape, rng)
        return out

    def _split(self, params: Sequence[tf.Tensor]) -> list[list[tf.Tensor]]:
        out, i = [], 0
        for layer, shape in self._layer_shapes():
            n = len(layer.params(shape))
            out.append(list(params[i : i + n]))
            i += n
        return out

    def logits(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        """Builtin-only forward pass; the frozen stack runs its standard ops, no gradient.

        Frozen kernels enter the graph as float32 constants of their int8 values times
        their scales; the exporter then stores them as int8 + DEQUANTIZE (see
        :mod:`model_export.int8_weights`), which TFLite computes once per interpreter
        and XNNPACK treats as static weights. A Conv2D (stride 1, odd kernel), ReLU,
        MeanPool2x2 run is computed as one :func:`L.conv_relu_pool` block.
        """
        x = self._frozen_features(x)
        layers = [layer for layer, _ in self._layer_shapes()]
        split = self._split(params)
        i = 0
        while i < len(layers):
            conv = _fusable_conv(layers[i : i + 3])
            if conv is not None:
                keep = _rows_read(_fusable_conv(layers[i + 3 : i + 6]), x, conv)
                x = L.conv_relu_pool(x, split[i][0], split[i][1], conv.padding, keep)
                i += 3
            else:
                x = layers[i].forward(x, split[i])
                i += 1
        return x

    def _frozen_features(self, x: tf.Tensor) -> tf.Tensor:
        if self.frozen is None:
            return x
        for layer, qparams in zip(self.frozen.layers, self.frozen.quantized(), strict=True):
            weights = [
                tf.constant(L.dequantize(*p) if isinstance(p, tuple) else p) for p in qparams
            ]
            x = layer.reference(x, weights)
        return tf.stop_gradient(x)

    def reference_logits(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        """The same function with standard TF ops (frozen weights dequantized in numpy)."""
        x = self._frozen_features(x)
        for (layer, _), layer_params in zip(self._layer_shapes(), self._split(params), strict=True):
            x = layer.reference(x, layer_params)
        return x

    def frozen_kernels(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(int8, scale)`` of every frozen kernel (empty without a frozen stack)."""
        if self.frozen is None:
            return []
        return [p for layer in self.frozen.quantized() for p in layer if isinstance(p, tuple)]


def _fusable_conv(layers: Sequence[L.Layer]) -> L.Conv2D | None:
    """The Conv2D of a Conv2D (stride 1, odd kernel), ReLU, MeanPool2x2 run, else None.

    :meth:`ModelSpec.logits` computes such a run as one :func:`L.conv_relu_pool`
    (the same function, faster in the device runtime and never computing the conv
    outputs the pool drops).
    """
    if len(layers) != 3:
        return None
    conv, act, pool = layers
    if (
        isinstance(conv, L.Conv2D)
        and conv.stride == 1
        and conv.kernel_size % 2 == 1
        and isinstance(act, L.ReLU)
        and isinstance(pool, L.MeanPool2x2)
    ):
        return conv
    return None


def _rows_read(nxt: L.Conv2D | None, x: tf.Tensor, conv: L.Conv2D) -> tuple[int, int] | None:
    """Pooled rows/columns of the block ``conv`` (input ``x``) that the next fused block
    ``nxt`` reads: a VALID block never reads the rows its own pool would drop."""
    if nxt is None or nxt.padding != "VALID":
        return None
    h, w, _ = conv.output_shape(tuple(int(d) for d in x.shape[1:]))
    hp, wp = h // 2, w // 2
    k, kb = nxt.kernel_size, (nxt.kernel_size + 1) // 2
    if (hp - k + 1) // 2 < 1 or (wp - k + 1) // 2 < 1:
        return None
    return 2 * ((hp - k + 1) // 2 + kb - 1), 2 * ((wp - k + 1) // 2 + kb - 1)


def _check_params(specs: Sequence[TensorSpec], params: Sequence[np.ndarray]) -> None:
    if len(params) != len(specs):
        raise ArtifactError(f"expected {len(specs)} parameter arrays, got {len(params)}")
    for spec, p in zip(specs, params, strict=True):
        if p.shape != spec.shape or p.dtype != np.float32:
            raise ArtifactError(
                f"parameter {spec.name} must be float32{list(spec.shape)}, "
                f"got {p.dtype}{list(p.shape)}"
            )


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(seed) -> ModelSpec`` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ArtifactError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return wrap


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def build(name: str, seed: int = 0) -> ModelSpec:
    """Build the registered model ``name``.

    Raises
    ------
    ArtifactError
        If no model has that name.
    """
    if name not in _REGISTRY:
        raise ArtifactError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    spec = _REGISTRY[name](seed)
    if spec.name != name:
        raise ArtifactError(f"builder for {name!r} returned a model named {spec.name!r}")
    return spec


@register("mlp-digits")
def mlp_digits(seed: int) -> ModelSpec:
    """64-32-10 MLP for 8x8 digits scaled to [0, 1]."""
    return ModelSpec("mlp-digits", (64,), 10, (L.Dense(32), L.ReLU(), L.Dense(10)))


@register("cnn-fmnist")
def cnn_fmnist(seed: int) -> ModelSpec:
    """28x28x1 -> conv3x3x8 -> pool -> conv3x3x16 -> pool -> dense 10 (VALID convs).

    VALID keeps it at ~5k parameters and ~40 % fewer multiply-adds than SAME
    (26 -> 13 -> 11 -> 5 pixels; the odd 11 -> 5 pool drops the last row and column).
    """
    return ModelSpec(
        "cnn-fmnist",
        (28, 28, 1),
        10,
        (
            L.Conv2D(8, padding="VALID"),
            L.ReLU(),
            L.MeanPool2x2(),
            L.Conv2D(16, padding="VALID"),
            L.ReLU(),
            L.MeanPool2x2(),
            L.Flatten(),
            L.Dense(10),
        ),
    )


TRANSFER_EXTRACTOR: tuple[L.Layer, ...] = (
    L.Conv2D(8),
    L.ReLU(),
    L.MeanPool2x2(),
    L.Conv2D(16),
    L.ReLU(),
    L.MeanPool2x2(),
    L.Flatten(),
    L.Dense(64),
    L.ReLU(),
)
PUBLIC_SPLIT = 10_000


@register("transfer-fmnist")
def transfer_fmnist(seed: int) -> ModelSpec:
    """Frozen conv extractor pretrained on the public split, trainable dense head."""
    x, y, _, _ = load_fashion_mnist(FASHION_MNIST_ROOT)
    extractor, head = pretrain(
        TRANSFER_EXTRACTOR, (L.Dense(10),), x[:PUBLIC_SPLIT], y[:PUBLIC_SPLIT], seed=seed
    )
    return ModelSpec(
        "transfer-fmnist",
        (28, 28, 1),
        10,
        (L.Dense(10),),
        frozen=extractor,
        initial_params=tuple(head),
    )


def pretrain(
    extractor: Sequence[L.Layer],
    head: Sequence[L.Layer],
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 0.1,
    max_seconds: float = 60.0,
) -> tuple[FrozenStack, list[np.ndarray]]:
    """Train ``extractor + head`` with TF autodiff (standard ops, seeded SGD).

    Returns the extractor as a :class:`FrozenStack` and the head's parameters,
    which become the artifact's initial trainable weights.
    """
    num_classes = int(y.max()) + 1
    spec = ModelSpec(
        "pretrain", tuple(int(d) for d in x.shape[1:]), num_classes, (*extractor, *head)
    )
    params = [tf.Variable(p) for p in spec.init_params(seed)]
    rng = np.random.default_rng(seed)

    @tf.function(
        input_signature=[
            tf.TensorSpec([batch_size, *spec.input_shape], tf.float32),
            tf.TensorSpec([batch_size], tf.int32),
        ]
    )
    def step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = spec.reference_logits(xb, params)
            loss = tf.reduce_mean(L.reference_cross_entropy(logits, yb))
        for v, g in zip(params, tape.gradient(loss, params), strict=True):
            v.assign_sub(lr * g)
        return loss

    deadline = time.monotonic() + max_seconds
    per_epoch = len(x) // batch_size
    order = rng.permutation(len(x))
    for i in range(steps):
        if i % per_epoch == 0 and i:
            order = rng.permutation(len(x))
        idx = order[(i % per_epoch) * batch_size : (i % per_epoch + 1) * batch_size]
        step(x[idx], y[idx])
        if time.monotonic() > deadline:
            raise ArtifactError(f"pretraining exceeded {max_seconds} s after {i + 1} steps")
    values = [v.numpy() for v in params]
    n_frozen = sum(len(layer.params(s)) for layer, s in spec._layer_shapes()[: len(extractor)])
    frozen_values, head_values = values[:n_frozen], values[n_frozen:]
    grouped, i = [], 0
    for layer, shape in spec._layer_shapes()[: len(extractor)]:
        n = len(layer.params(shape))
        grouped.append(tuple(frozen_values[i : i + n]))
        i += n
    return FrozenStack(tuple(extractor), tuple(grouped)), head_values
