"""Layer library: stateless layers whose forward and backward passes lower to TFLite builtin ops."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tensorflow as tf

from fedge.edge_client.errors import ArtifactError
from fedge.model_export.conv_pool import conv_relu_pool
from fedge.model_export.int8_weights import dequantize, quantize_per_channel
from fedge.model_export.ops import (
    PADDINGS,
    STRIDES,
    GradFn,
    check_conv_args,
    conv2d,
    dense,
    masked_mean,
    mean_pool_2x2,
    reference_cross_entropy,
    relu,
    same_padding,
    softmax_cross_entropy,
)

# The ops live in ``ops``, ``conv_pool`` and ``int8_weights``; the exporter, the zoo and the tests
# reach them through this module (``layers as L``), so they are re-exported here.
__all__ = [
    "PADDINGS",
    "STRIDES",
    "Conv2D",
    "Dense",
    "Flatten",
    "GradFn",
    "Layer",
    "MeanPool2x2",
    "ParamSpec",
    "ReLU",
    "Shape",
    "conv2d",
    "conv_relu_pool",
    "dense",
    "dequantize",
    "masked_mean",
    "mean_pool_2x2",
    "quantize_per_channel",
    "reference_cross_entropy",
    "relu",
    "same_padding",
    "softmax_cross_entropy",
]

Shape = tuple[int, ...]


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
        check_conv_args(self.stride, self.padding)

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
