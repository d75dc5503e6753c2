"""Layer library whose forward and backward passes lower to TFLite builtin ops only."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from edge_client.errors import ArtifactError

Shape = tuple[int, ...]
GradFn = Callable[..., Any]

PADDINGS = ("SAME", "VALID")
STRIDES = (1, 2)


# ---------------------------------------------------------------- builtin-only ops


def relu(x: tf.Tensor) -> tf.Tensor:
    """ReLU whose gradient is ``g * [x > 0]`` (no ``ReluGrad``).

    The step is computed from the output ``y = relu(x)`` as ``ceil(min(y, 1))``: equal
    to ``[x > 0]`` for every ``y >= 0``, and made of MINIMUM, CEIL and MUL, which the
    interpreter's XNNPACK delegate runs (GREATER against a scalar takes TFLite's slow
    broadcasting path, SIGN is not delegated).
    """

    @tf.custom_gradient
    def _relu(x: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        y = tf.nn.relu(x)

        def grad(g: tf.Tensor) -> tf.Tensor:
            return g * tf.math.ceil(tf.minimum(y, 1.0))

        return y, grad

    return _relu(x)


def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """``x @ kernel + bias`` with an explicit matmul/sum gradient."""

    @tf.custom_gradient
    def _dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        def grad(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            dx = tf.matmul(g, kernel, transpose_b=True)
            dk = tf.matmul(x, g, transpose_a=True)
            return dx, dk, tf.reduce_sum(g, axis=0)

        return tf.matmul(x, kernel) + bias, grad

    return _dense(x, kernel, bias)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding that TensorFlow's ``SAME`` uses along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(
    x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int, padding: str
) -> tf.Tensor:
    """2-D convolution plus bias (NHWC, kernel HWIO) with builtin-only gradients.

    ``SAME`` is an explicit ``tf.pad`` (whose gradient is a slice) followed by a
    ``VALID`` convolution; see :func:`_conv2d_valid` for the forward pass and gradients.
    """
    _check_conv_args(stride, padding)
    if padding == "SAME":
        _, h, w, _ = x.shape
        kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
        pads = [
            [0, 0],
            list(same_padding(h, kh, stride)),
            list(same_padding(w, kw, stride)),
            [0, 0],
        ]
        if any(p for pair in pads for p in pair):
            x = tf.pad(x, pads)
    return _conv2d_valid(x, kernel, bias, stride)


def _patch_filter(kh: int, kw: int, channels: int) -> np.ndarray:
    """Depthwise filter whose output channel ``c * kh * kw + i * kw + j`` is input ``c``
    shifted by ``(i, j)``: a VALID depthwise convolution with it is im2col."""
    taps = np.zeros((kh, kw, channels, kh * kw), np.float32)
    for i in range(kh):
        for j in range(kw):
            taps[i, j, :, i * kw + j] = 1.0
    return taps


def _conv2d_valid(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int) -> tf.Tensor:
    """VALID convolution plus bias as a patch matrix times a kernel matrix.

    Forward: a depthwise convolution with the constant one-hot :func:`_patch_filter`
    builds the ``[B * Ho * Wo, C * kh * kw]`` patch matrix ``P`` (XNNPACK runs it: the
    filter is static), which BATCH_MATMUL (ruy) multiplies by the kernel as a
    ``[C * kh * kw, O]`` matrix. TFLite's own CONV_2D with a run-time filter is slower
    here. The bias is added to the 2-D product: with the reshape to 4-D right after
    the matmul, the converter would fold it into a batched BATCH_MATMUL of many tiny
    matrices.

    Gradients, given ``g``: the bias gradient is ``H * W * sum_B(mean_HW(g))`` (a MEAN
    over axes 1 and 2 is global average pooling, which XNNPACK runs); the input gradient
    is a transposed convolution of ``g`` with the kernel. The filter gradient is
    ``g^T P`` (BATCH_MATMUL, reusing ``P``) when there are several input channels; with
    one it is a VALID convolution of ``x`` transposed to ``[C, H, W, B]`` with ``g``
    transposed to ``[Ho, Wo, B, O]`` as the filter, dilated by the stride and sliced to
    ``[kh, kw]`` (``P`` is then a narrow matrix whose transposition dominates).
    """
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    x_shape = [int(d) for d in x.shape]
    b, h, w, _ = x_shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    n, taps = b * ho * wo, cin * kh * kw

    @tf.custom_gradient
    def _conv(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        patches = tf.nn.depthwise_conv2d(
            x, tf.constant(_patch_filter(kh, kw, cin)), [1, stride, stride, 1], "VALID"
        )
        p = tf.reshape(patches, [n, taps])
        k = tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]), [taps, cout])
        y = tf.reshape(tf.matmul(p, k) + bias, [b, ho, wo, cout])

        def grad(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            db = tf.reduce_sum(tf.reduce_mean(g, axis=[1, 2]), axis=0) * float(ho * wo)
            dx = tf.nn.conv2d_transpose(g, kernel, x_shape, strides=stride, padding="VALID")
            if cin > 1:
                gt = tf.reshape(tf.transpose(g, [3, 0, 1, 2]), [cout, n])
                dk = tf.reshape(tf.matmul(gt, p), [cout, cin, kh, kw])
                return dx, tf.transpose(dk, [2, 3, 1, 0]), db
            xt = tf.transpose(x, [3, 1, 2, 0])
            gt = tf.transpose(g, [1, 2, 0, 3])
            dk = tf.nn.conv2d(xt, gt, strides=1, padding="VALID", dilations=stride)
            return dx, tf.transpose(dk[:, :kh, :kw, :], [1, 2, 0, 3]), db

        return y, grad

    return _conv(x, kernel, bias)


def mean_pool_2x2(x: tf.Tensor) -> tf.Tensor:
    """2x2 mean pooling, stride 2, VALID (odd trailing rows/columns are dropped).

    Forward is AVERAGE_POOL_2D (XNNPACK); the gradient spreads ``g / 4`` over each
    window with ``broadcast_to`` and pads the dropped edge with zeros.
    """
    b, h, w, c = (int(d) for d in x.shape)
    ho, wo = h // 2, w // 2
    if ho == 0 or wo == 0:
        raise ArtifactError(f"mean_pool_2x2 needs at least 2x2 spatial input, got {h}x{w}")

    @tf.custom_gradient
    def _pool(x: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        y = tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")

        def grad(g: tf.Tensor) -> tf.Tensor:
            spread = tf.broadcast_to(
                tf.reshape(g * 0.25, [b, ho, 1, wo, 1, c]), [b, ho, 2, wo, 2, c]
            )
            dx = tf.reshape(spread, [b, 2 * ho, 2 * wo, c])
            if h % 2 or w % 2:
                dx = tf.pad(dx, [[0, 0], [0, h - 2 * ho], [0, w - 2 * wo], [0, 0]])
            return dx

        return y, grad

    return _pool(x)


def softmax_cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example ``logsumexp(logits) - logits[label]``; gradient ``softmax - one_hot``."""
    onehot = tf.one_hot(labels, int(logits.shape[-1]), dtype=logits.dtype)

    @tf.custom_gradient
    def _ce(logits: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        def grad(g: tf.Tensor) -> tf.Tensor:
            return tf.expand_dims(g, 1) * (tf.nn.softmax(logits) - onehot)

        lse = tf.reduce_logsumexp(logits, axis=1)
        return lse - tf.reduce_sum(logits * onehot, axis=1), grad

    return _ce(logits)


def reference_cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example loss with the standard TF op (for verification only)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def masked_mean(per_example: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``per_example`` over rows where ``mask`` is 1 (0 if the mask is empty)."""
    return tf.reduce_sum(per_example * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def quantize_per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization with one float32 scale per output channel (last axis)."""
    absmax = np.abs(weights).reshape(-1, weights.shape[-1]).max(axis=0)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale`` as float32: the weights the artifact's DEQUANTIZE ops produce."""
    return q.astype(np.float32) * scale


def _check_conv_args(stride: int, padding: str) -> None:
    if stride not in STRIDES:
        raise ArtifactError(f"conv stride must be one of {STRIDES}, got {stride!r}")
    if padding not in PADDINGS:
        raise ArtifactError(f"conv padding must be one of {PADDINGS}, got {padding!r}")


# ---------------------------------------------------------------- layers


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of a layer: its name suffix, shape and fan-in/fan-out."""

    suffix: str
    shape: Shape
    fan_in: int
    fan_out: int


class Layer(ABC):
    """A stateless layer: parameters are passed in, so one definition serves every graph."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def output_shape(self, input_shape: Shape) -> Shape:
        """Shape of one example after this layer (batch axis excluded)."""

    def params(self, input_shape: Shape) -> list[ParamSpec]:
        """Parameter tensors this layer needs for ``input_shape`` (none by default)."""
        return []

    @abstractmethod
    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        """Builtin-only forward pass (its gradient is builtin-only too)."""

    @abstractmethod
    def reference(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        """The same function with standard TF ops and TF's own gradients."""

    def init_params(self, input_shape: Shape, rng: np.random.Generator) -> list[np.ndarray]:
        """Glorot-uniform kernels (He-scaled for layers followed by ReLU) and zero biases."""
        out = []
        for spec in self.params(input_shape):
            if spec.suffix == "bias":
                out.append(np.zeros(spec.shape, np.float32))
            else:
                limit = math.sqrt(6.0 / (spec.fan_in + spec.fan_out))
                out.append(rng.uniform(-limit, limit, spec.shape).astype(np.float32))
        return out


@dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer on flat inputs ``[B, n]``."""

    units: int
    kind: ClassVar[str] = "dense"

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ArtifactError(f"Dense needs a flat input, got shape {input_shape} (add Flatten)")
        return (self.units,)

    def params(self, input_shape: Shape) -> list[ParamSpec]:
        n = input_shape[0]
        return [
            ParamSpec("kernel", (n, self.units), n, self.units),
            ParamSpec("bias", (self.units,), n, self.units),
        ]

    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return dense(x, params[0], params[1])

    def reference(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.matmul(x, params[0]) + params[1]


@dataclass(frozen=True)
class Conv2D(Layer):
    """Square-kernel 2-D convolution with bias, NHWC."""

    filters: int
    kernel_size: int = 3
    stride: int = 1
    padding: str = "SAME"
    kind: ClassVar[str] = "conv"

    def __post_init__(self) -> None:
        _check_conv_args(self.stride, self.padding)

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise ArtifactError(f"Conv2D needs an [H, W, C] input, got shape {input_shape}")
        h, w, _ = input_shape
        k, s = self.kernel_size, self.stride
        if self.padding == "SAME":
            return (math.ceil(h / s), math.ceil(w / s), self.filters)
        if h < k or w < k:
            raise ArtifactError(f"Conv2D VALID kernel {k} is larger than input {h}x{w}")
        return ((h - k) // s + 1, (w - k) // s + 1, self.filters)

    def params(self, input_shape: Shape) -> list[ParamSpec]:
        k, cin = self.kernel_size, input_shape[-1]
        fan_in, fan_out = k * k * cin, k * k * self.filters
        return [
            ParamSpec("kernel", (k, k, cin, self.filters), fan_in, fan_out),
            ParamSpec("bias", (self.filters,), fan_in, fan_out),
        ]

    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return conv2d(x, params[0], params[1], self.stride, self.padding)

    def reference(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        y = tf.nn.conv2d(x, params[0], strides=self.stride, padding=self.padding)
        return y + params[1]


@dataclass(frozen=True)
class ReLU(Layer):
    """Rectified linear unit."""

    kind: ClassVar[str] = "relu"

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return relu(x)

    def reference(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.nn.relu(x)


@dataclass(frozen=True)
class MeanPool2x2(Layer):
    """2x2 average pooling with stride 2 (VALID)."""

    kind: ClassVar[str] = "pool"

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3 or input_shape[0] < 2 or input_shape[1] < 2:
            raise ArtifactError(f"MeanPool2x2 needs an [H>=2, W>=2, C] input, got {input_shape}")
        h, w, c = input_shape
        return (h // 2, w // 2, c)

    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return mean_pool_2x2(x)

    def reference(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")


@dataclass(frozen=True)
class Flatten(Layer):
    """Flatten everything but the batch axis."""

    kind: ClassVar[str] = "flatten"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)

    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.reshape(x, [int(x.shape[0]), -1])

    def reference(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.reshape(x, [int(x.shape[0]), -1])
