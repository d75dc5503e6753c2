"""Layer library whose forward and backward passes lower to TFLite builtin ops only."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from fedge.edge_client.errors import ArtifactError

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
    window with two CONCATENATIONs (each value next to itself along the channel axis,
    then each row next to itself, reshapes in between; XNNPACK runs them; a 6-D
    BROADCAST_TO takes TFLite's slow path) and pads the dropped edge with zeros.
    A pool right after a stride-1 Conv2D and ReLU is fused into
    :func:`conv_relu_pool` by the model spec instead.
    """
    b, h, w, c = (int(d) for d in x.shape)
    ho, wo = h // 2, w // 2
    if ho == 0 or wo == 0:
        raise ArtifactError(f"mean_pool_2x2 needs at least 2x2 spatial input, got {h}x{w}")

    @tf.custom_gradient
    def _pool(x: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        y = tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")

        def grad(g: tf.Tensor) -> tf.Tensor:
            q = g * 0.25
            cols = tf.reshape(tf.concat([q, q], axis=3), [b, ho, 2 * wo, c])
            dx = tf.reshape(tf.concat([cols, cols], axis=2), [b, 2 * ho, 2 * wo, c])
            if h % 2 or w % 2:
                dx = tf.pad(dx, [[0, 0], [0, h - 2 * ho], [0, w - 2 * wo], [0, 0]])
            return dx

        return y, grad

    return _pool(x)


def _s2d_tap_matrix(k: int) -> np.ndarray:
    """0/1 matrix ``E`` mapping a ``k x k`` kernel onto the space-to-depth grid.

    Row ``(u, v, dy, dx, pa, pb)`` (``kb = (k + 1) // 2`` blocks per axis, then the
    position inside a 2x2 block, then the output phase), column ``(i, j)``: the kernel
    tap that input pixel ``(2u + dy, 2v + dx)`` of a ``2kb x 2kb`` window meets when it
    produces output pixel ``(pa, pb)`` of the window's 2x2 output block.
    """
    kb = (k + 1) // 2
    e = np.zeros((kb, kb, 2, 2, 2, 2, k, k), np.float32)
    for u, v, dy, dx, pa, pb in np.ndindex(kb, kb, 2, 2, 2, 2):
        i, j = 2 * u + dy - pa, 2 * v + dx - pb
        if 0 <= i < k and 0 <= j < k:
            e[u, v, dy, dx, pa, pb, i, j] = 1.0
    return e.reshape(kb * kb * 16, k * k)


def _s2d_patch_filter(kb: int) -> np.ndarray:
    """One-hot ``[2kb, 2kb, 1, 4 * kb * kb]`` filter: a VALID stride-2 convolution with it
    gives the patches of :func:`_s2d_patches` (one input channel)."""
    f = np.zeros((2 * kb, 2 * kb, 1, 4 * kb * kb), np.float32)
    for u, v, dy, dx in np.ndindex(kb, kb, 2, 2):
        f[2 * u + dy, 2 * v + dx, 0, ((u * kb + v) * 2 + dy) * 2 + dx] = 1.0
    return f


def _s2d_patches(xs: tf.Tensor, kb: int, hp: int, wp: int) -> tf.Tensor:
    """``[B, hp, wp, kb * kb * C]`` patches (order ``u, v, channel``) of a ``kb x kb``
    VALID window over ``xs``: slices and two concatenations (no gather, no big filter)."""
    if kb == 1:
        return xs[:, :hp, :wp, :]
    cols = tf.concat([xs[:, :, v : v + wp, :] for v in range(kb)], axis=3)
    return tf.concat([cols[:, u : u + hp] for u in range(kb)], axis=3)


def conv_relu_pool(
    x: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor,
    padding: str,
    keep: tuple[int, int] | None = None,
) -> tf.Tensor:
    """``mean_pool_2x2(relu(conv2d(x, kernel, bias, 1, padding)))`` computed as one block.

    The pool reads each 2x2 block of conv outputs, so the block works on the 2x2
    space-to-depth grid of the input: one output cell there is the 2x2 block of conv
    outputs that one pooled value averages, and it depends on a ``2kb x 2kb`` input
    window (``kb = (k + 1) // 2`` cells of the space-to-depth grid). Forward:
    SPACE_TO_DEPTH, patches from slices and concatenations (``[N, kb * kb * 4 * C]``,
    ``N = B * Hp * Wp`` pooled pixels), one BATCH_MATMUL with the kernel laid out for
    all four output phases (``[kb * kb * 4 * C, 4 * O]``, built from the kernel by a
    constant 0/1 matrix, see :func:`_s2d_tap_matrix`), bias, ReLU, and the pool as a
    FULLY_CONNECTED with a constant ``[4 * O, O]`` matrix of ``1/4`` (XNNPACK). With
    one input channel the patches come from a stride-2 CONV_2D with a constant one-hot
    filter (XNNPACK) instead. Conv outputs the pool drops (odd trailing row/column) are
    never computed: the input is cropped to the window the pool reads. ``keep = (h, w)``
    computes only the first ``h x w`` pooled outputs (for a consumer that reads no
    more; the model spec passes it when the next block is VALID).

    Gradients, given ``g`` (pooled): ``g' = mask * g / 4`` per phase (``g / 4`` copied
    to the four phases by the transposed constant FULLY_CONNECTED, XNNPACK, where a
    broadcasting MUL over a middle axis is several times slower; ``mask =
    ceil(min(relu, 1))`` as in :func:`relu`); bias gradient a MEAN over
    pixels and phases; kernel gradient ``P^T g'`` (BATCH_MATMUL) folded back to
    ``[k, k, C, O]`` by the same 0/1 matrix; input gradient ``g' K'^T``
    (BATCH_MATMUL) summed back over the ``kb x kb`` window with pads and adds on the
    small space-to-depth grid, then DEPTH_TO_SPACE. No TRANSPOSE_CONV, no CONV_2D with
    a run-time filter: those are slow in tflite-runtime 2.14, BATCH_MATMUL with large
    operands is not.
    """
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    if kh != kw or kh % 2 == 0:
        raise ArtifactError(f"conv_relu_pool needs an odd square kernel, got {kh}x{kw}")
    _check_conv_args(1, padding)
    k = kh
    if padding == "SAME":
        _, h, w, _ = x.shape
        pads = [[0, 0], list(same_padding(h, k, 1)), list(same_padding(w, k, 1)), [0, 0]]
        if any(p for pair in pads for p in pair):
            x = tf.pad(x, pads)
    x_shape = [int(d) for d in x.shape]
    b, h, w, _ = x_shape
    hp, wp = (h - k + 1) // 2, (w - k + 1) // 2
    if hp < 1 or wp < 1:
        raise ArtifactError(f"conv_relu_pool: {k}x{k} conv of {h}x{w} leaves nothing to pool")
    if keep is not None:
        if not (1 <= keep[0] <= hp and 1 <= keep[1] <= wp):
            raise ArtifactError(f"conv_relu_pool: cannot keep {keep} of {hp}x{wp} outputs")
        hp, wp = keep
    kb = (k + 1) // 2
    hc, wc = 2 * (hp + kb - 1), 2 * (wp + kb - 1)  # input rows/cols the pool reads
    n, s = b * hp * wp, 4 * cin
    taps = kb * kb * s
    e = _s2d_tap_matrix(k)
    # [O, 4 * O]: one value to each of the four outputs of its pooling window, / 4
    quarter = np.tile(np.eye(cout, dtype=np.float32), (1, 4)) * np.float32(0.25)

    @tf.custom_gradient
    def _block(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        xc = x[:, :hc, :wc, :] if (hc, wc) != (h, w) else x
        if cin == 1:
            # one float per copy would make slices and concatenations slow; a CONV_2D with
            # a constant one-hot filter (XNNPACK) gathers the same patches
            patches = tf.nn.conv2d(xc, tf.constant(_s2d_patch_filter(kb)), 2, "VALID")
        else:
            patches = _s2d_patches(tf.nn.space_to_depth(xc, 2), kb, hp, wp)
        p = tf.reshape(patches, [n, taps])
        # m: [(u, v, dy, dx), phase, C, O]
        m = tf.reshape(
            tf.matmul(tf.constant(e), tf.reshape(kernel, [k * k, cin * cout])),
            [kb * kb * 4, 4, cin, cout],
        )
        k_fwd = tf.reshape(tf.transpose(m, [0, 2, 1, 3]), [taps, 4 * cout])
        y = tf.matmul(p, k_fwd) + tf.tile(bias, [4])
        r = tf.nn.relu(y)
        out = tf.reshape(tf.matmul(r, tf.constant(quarter.T.copy())), [b, hp, wp, cout])

        def grad(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            mask = tf.math.ceil(tf.minimum(r, 1.0))
            g2 = mask * tf.matmul(tf.reshape(g, [n, cout]), tf.constant(quarter))
            db = tf.reduce_sum(tf.reduce_mean(tf.reshape(g2, [b, hp * wp, 4, cout]), [1, 2]), 0)
            db = db * float(hp * wp * 4)
            dkf = tf.matmul(tf.transpose(p), g2)  # [(u, v, dy, dx, C), (phase, O)]
            dm = tf.reshape(
                tf.transpose(tf.reshape(dkf, [kb * kb * 4, cin, 4, cout]), [0, 2, 1, 3]),
                [kb * kb * 16, cin * cout],
            )
            dk = tf.reshape(tf.matmul(tf.constant(e.T.copy()), dm), [k, k, cin, cout])
            k_bwd = tf.reshape(tf.transpose(m, [1, 3, 0, 2]), [4 * cout, taps])
            dp = tf.reshape(tf.matmul(g2, k_bwd), [b, hp, wp, kb, kb * s])
            rows = _shift_sum([dp[:, :, :, u, :] for u in range(kb)], axis=1)
            rows = tf.reshape(rows, [b, hc // 2, wp, kb, s])
            dxs = _shift_sum([rows[:, :, :, v, :] for v in range(kb)], axis=2)
            dx = tf.nn.depth_to_space(dxs, 2)
            if (hc, wc) != (h, w):
                dx = tf.pad(dx, [[0, 0], [0, h - hc], [0, w - wc], [0, 0]])
            return dx, dk, db

        return out, grad

    return _block(x, kernel, bias)


def _shift_sum(parts: Sequence[tf.Tensor], axis: int) -> tf.Tensor:
    """``sum_i parts[i]`` shifted by ``i`` along ``axis`` (zero-padded to ``len - 1`` more)."""
    last = len(parts) - 1
    total = parts[0]
    for i, part in enumerate(parts):
        if last:
            pads = [[0, 0]] * 4
            pads[axis] = [i, last - i]
            part = tf.pad(part, pads)
        total = part if i == 0 else total + part
    return total


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
