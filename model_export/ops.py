"""Builtin-only ops: forward passes whose custom gradients lower to TFLite builtin ops only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from fedge.edge_client.errors import ArtifactError

GradFn = Callable[..., Any]

PADDINGS = ("SAME", "VALID")
STRIDES = (1, 2)


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


def pad_same(x: tf.Tensor, kh: int, kw: int, stride: int) -> tf.Tensor:
    """``x`` padded as ``SAME`` would pad it, by an explicit ``tf.pad`` (gradient: a slice)."""
    _, h, w, _ = x.shape
    pads = [[0, 0], list(same_padding(h, kh, stride)), list(same_padding(w, kw, stride)), [0, 0]]
    if any(p for pair in pads for p in pair):
        x = tf.pad(x, pads)
    return x


def check_conv_args(stride: int, padding: str) -> None:
    """Refuse a stride or padding the builtin-only convolutions do not implement."""
    if stride not in STRIDES:
        raise ArtifactError(f"conv stride must be one of {STRIDES}, got {stride!r}")
    if padding not in PADDINGS:
        raise ArtifactError(f"conv padding must be one of {PADDINGS}, got {padding!r}")


def conv2d(
    x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int, padding: str
) -> tf.Tensor:
    """2-D convolution plus bias (NHWC, kernel HWIO) with builtin-only gradients.

    ``SAME`` is an explicit ``tf.pad`` (whose gradient is a slice) followed by a
    ``VALID`` convolution; see :func:`_conv2d_valid` for the forward pass and gradients.
    """
    check_conv_args(stride, padding)
    if padding == "SAME":
        x = pad_same(x, int(kernel.shape[0]), int(kernel.shape[1]), stride)
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
    :func:`fedge.model_export.conv_pool.conv_relu_pool` by the model spec instead.
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
