"""Export a model spec to ``model.tflite`` + ``manifest.json`` (builtin ops only, verified)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from fedge.edge_client.artifact import MANIFEST_FILE, MODEL_FILE, SET_WEIGHTS_OUTPUT, Manifest
from fedge.edge_client.errors import ArtifactError
from fedge.model_export import layers as L
from fedge.model_export import zoo
from fedge.model_export.int8_weights import store_kernels_as_int8
from fedge.model_export.verify import verify_artifact
from fedge.model_export.zoo import ModelSpec

EXPORTER_VERSION = "fedge-export 1 (tensorflow " + tf.__version__ + ")"
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


class _ArtifactModule(tf.Module):
    """Variables plus the five contract signatures, traced with a fixed batch size."""

    def __init__(self, spec: ModelSpec, params: Sequence[np.ndarray], batch_size: int) -> None:
        super().__init__(name="fedge_model")
        self.spec = spec
        self.names = [t.name for t in spec.tensor_specs()]
        self.weights = [tf.Variable(p, name=n) for p, n in zip(params, self.names, strict=True)]
        b = batch_size
        x = tf.TensorSpec([b, *spec.input_shape], tf.float32, name="x")
        y = tf.TensorSpec([b], tf.int32, name="y")
        mask = tf.TensorSpec([b], tf.float32, name="mask")
        lr = tf.TensorSpec([], tf.float32, name="lr")
        tensors = [tf.TensorSpec(t.shape, tf.float32, name=t.name) for t in spec.tensor_specs()]
        self.train = tf.function(self._train, input_signature=[x, y, mask, lr])
        self.evaluate = tf.function(self._evaluate, input_signature=[x, y, mask])
        self.infer = tf.function(self._infer, input_signature=[x])
        self.get_weights = tf.function(self._get_weights, input_signature=[])
        self.set_weights = tf.function(self._set_weights, input_signature=tensors)

    def signatures(self) -> dict[str, Any]:
        return {
            key: getattr(self, key).get_concrete_function()
            for key in ("train", "evaluate", "infer", "get_weights", "set_weights")
        }

    def _train(
        self, x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor, lr: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = self.spec.logits(x, self.weights)
            loss = L.masked_mean(L.softmax_cross_entropy(logits, y), mask)
        grads = tape.gradient(loss, self.weights)
        for var, grad in zip(self.weights, grads, strict=True):
            var.assign_sub(lr * grad)
        return {"loss": loss}

    def _evaluate(self, x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = self.spec.logits(x, self.weights)
        loss = tf.reduce_sum(L.softmax_cross_entropy(logits, y) * mask)
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
        return {"loss": loss, "correct": tf.reduce_sum(hits * mask)}

    def _infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"logits": self.spec.logits(x, self.weights)}

    def _get_weights(self) -> dict[str, tf.Tensor]:
        return {n: v.read_value() for n, v in zip(self.names, self.weights, strict=True)}

    def _set_weights(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        for var, value in zip(self.weights, tensors, strict=True):
            var.assign(value)
        # TFLite drops a signature's assignments when it has no output.
        return {SET_WEIGHTS_OUTPUT: tf.constant(len(tensors), tf.int32)}


def convert(spec: ModelSpec, params: Sequence[np.ndarray], batch_size: int) -> bytes:
    """Trace the signatures, convert them with TFLite builtin ops only, frozen kernels int8.

    Raises
    ------
    ArtifactError
        If the converter needs an op outside the builtin set.
    """
    module = _ArtifactModule(spec, params, batch_size)
    with tempfile.TemporaryDirectory(prefix="fedge-export-") as tmp:
        sigs = module.signatures()
        tf.saved_model.save(module, tmp, signatures=sigs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(sigs))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            model_bytes = bytes(converter.convert())
        except Exception as exc:  # the converter raises ConverterError and friends
            raise ArtifactError(f"TFLite conversion of {spec.name!r} failed: {exc}") from exc
    return store_kernels_as_int8(model_bytes, spec.frozen_kernels())


def op_names(model_bytes: bytes) -> list[str]:
    """Sorted names of the ops a flatbuffer uses (custom ops by their custom code)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    names = set()
    for code in model.operatorCodes:
        if code.customCode:
            names.add(
                code.customCode.decode()
                if isinstance(code.customCode, bytes)
                else str(code.customCode)
            )
        else:
            number = max(code.builtinCode, code.deprecatedBuiltinCode)
            names.add(_OP_NAMES.get(number, f"BUILTIN_{number}"))
    return sorted(names)


def export_spec(
    spec: ModelSpec, out_dir: Path, *, batch_size: int | None = None, seed: int = 0
) -> Manifest:
    """Export ``spec`` into ``out_dir`` after verifying the artifact; see :func:`export_model`."""
    b = spec.batch_size if batch_size is None else batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ArtifactError(f"batch_size must be an int >= 1, got {batch_size!r}")
    params = spec.init_params(seed)
    model_bytes = convert(spec, params, b)
    tensors = spec.tensor_specs()
    manifest = Manifest(
        model=spec.name,
        input_shape=spec.input_shape,
        input_dtype="float32",
        num_classes=spec.num_classes,
        batch_size=b,
        tensors=tuple(tensors),
        param_count=sum(t.size for t in tensors),
        frozen_param_count=spec.frozen.param_count if spec.frozen else 0,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        ops=tuple(op_names(model_bytes)),
        exporter_version=EXPORTER_VERSION,
    )
    verify_artifact(spec, params, manifest, model_bytes, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / MODEL_FILE, model_bytes)
    _write_atomic(out_dir / MANIFEST_FILE, manifest.to_json())
    return manifest


def export_model(
    name: str, out_dir: Path, *, batch_size: int | None = None, seed: int = 0
) -> Manifest:
    """Build the zoo model ``name``, export it to ``out_dir`` and return its manifest.

    Writes ``out_dir/model.tflite`` and ``out_dir/manifest.json`` only after the
    artifact has loaded in the device runtime and one ``train`` step matched TF
    autodiff within 1e-5.

    Raises
    ------
    ArtifactError
        Unknown model, conversion failure or failed verification (nothing is written).
    """
    return export_spec(zoo.build(name, seed), out_dir, batch_size=batch_size, seed=seed)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
