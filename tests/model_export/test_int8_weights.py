"""Frozen kernels stored as int8 + DEQUANTIZE: same outputs, a quarter of the bytes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import Signature, make_interpreter
from fedge.model_export import layers as L
from fedge.model_export.exporter import op_names
from fedge.model_export.int8_weights import store_kernels_as_int8

RNG = np.random.default_rng(5)
CONV = L.quantize_per_channel(RNG.normal(size=(3, 3, 4, 16)).astype(np.float32))
DENSE = L.quantize_per_channel(RNG.normal(size=(256, 40)).astype(np.float32))
X = RNG.uniform(size=(4, 6, 6, 4)).astype(np.float32)


def _frozen_model() -> bytes:
    """A conv + dense model whose kernels are float32 constants equal to q * scale."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(X.shape, tf.float32, name="x")])
        def run(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            h = tf.nn.relu(tf.nn.conv2d(x, tf.constant(L.dequantize(*CONV)), 1, "VALID"))
            return {"y": tf.matmul(tf.reshape(h, [4, -1]), tf.constant(L.dequantize(*DENSE)))}

    module = Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.run.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return bytes(converter.convert())


def _run(model: bytes, xnnpack: bool) -> np.ndarray:
    interpreter = make_interpreter(model, xnnpack=xnnpack)
    (key,) = interpreter.get_signature_list()
    return next(iter(Signature(interpreter, key)(x=X).values()))


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    plain = _frozen_model()
    return plain, store_kernels_as_int8(plain, [CONV, DENSE])


def test_int8_kernels_give_the_same_outputs_with_and_without_xnnpack(
    models: tuple[bytes, bytes],
) -> None:
    plain, int8 = models
    want = _run(plain, xnnpack=False)
    for xnnpack in (False, True):
        np.testing.assert_allclose(_run(int8, xnnpack), want, rtol=1e-5, atol=1e-5)


def test_int8_kernels_replace_the_float32_bytes(models: tuple[bytes, bytes]) -> None:
    plain, int8 = models
    assert "DEQUANTIZE" in op_names(int8) and "DEQUANTIZE" not in op_names(plain)
    saved = len(plain) - len(int8)
    n = CONV[0].size + DENSE[0].size
    assert saved >= 2.8 * n  # 4 bytes per weight became 1, plus a few table entries
    for q, scale in (CONV, DENSE):
        assert L.dequantize(q, scale).T.tobytes() not in int8


def test_kernels_the_converter_changed_are_refused(models: tuple[bytes, bytes]) -> None:
    plain, _ = models
    other = L.quantize_per_channel(RNG.normal(size=(3, 3, 4, 16)).astype(np.float32))
    with pytest.raises(ArtifactError, match=r"frozen kernels \[1\]"):
        store_kernels_as_int8(plain, [CONV, other])


def test_no_kernels_leave_the_model_unchanged(models: tuple[bytes, bytes]) -> None:
    plain, _ = models
    assert store_kernels_as_int8(plain, []) == plain
