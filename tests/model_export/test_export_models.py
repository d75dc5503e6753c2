"""Exporting the zoo: manifests, one train step equal to TF's, verification that refuses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from fedge.edge_client.artifact import Manifest, load_artifact
from fedge.edge_client.errors import ArtifactError, DataError
from fedge.model_export import available_models, build, export_spec, register
from fedge.model_export import layers as L
from fedge.model_export.datasets import load_digits_arrays, load_fashion_mnist
from fedge.model_export.verify import reference_gradients, verification_batch
from fedge.model_export.zoo import ModelSpec, pretrain

GradFn = Any


def test_zoo_lists_the_three_models() -> None:
    assert {"mlp-digits", "cnn-fmnist", "transfer-fmnist"} <= set(available_models())


@pytest.mark.parametrize("name", ["mlp-digits", "cnn-fmnist", "transfer-fmnist"])
def test_export_writes_a_consistent_manifest(
    name: str, zoo_artifacts: dict[str, Path], zoo_specs: dict[str, ModelSpec]
) -> None:
    out = zoo_artifacts[name]
    raw = json.loads((out / "manifest.json").read_text())
    manifest = Manifest.from_dict(raw)
    model = (out / "model.tflite").read_bytes()
    spec = zoo_specs[name]
    assert raw["format_version"] == 1 and manifest.model == name
    assert manifest.sha256 == hashlib.sha256(model).hexdigest()
    assert manifest.batch_size == 32 and manifest.input_dtype == "float32"
    assert manifest.num_classes == 10
    assert list(manifest.ops) == sorted(manifest.ops)
    # trainable convs are BATCH_MATMULs: run-time-filter CONV_2D and TRANSPOSE_CONV are
    # slow in tflite-runtime (CONV_2D remains with constant filters only)
    assert ("CONV_2D" in manifest.ops) == (name != "mlp-digits")
    assert "TRANSPOSE_CONV" not in manifest.ops
    assert _conv_filters_are_constant(model)
    assert "BATCH_MATMUL" in manifest.ops or name == "transfer-fmnist"
    assert not [op for op in manifest.ops if op.startswith("Flex")]
    assert {"ASSIGN_VARIABLE", "READ_VARIABLE", "VAR_HANDLE"} <= set(manifest.ops)
    assert manifest.param_count == sum(int(np.prod(t.shape)) for t in manifest.tensors)
    assert [t.name for t in manifest.tensors] == [t.name for t in spec.tensor_specs()]
    assert manifest.frozen_param_count == (spec.frozen.param_count if spec.frozen else 0)
    weights = load_artifact(out).load().get_weights()
    assert {k: v.shape for k, v in weights.items()} == {t.name: t.shape for t in manifest.tensors}


def _conv_filters_are_constant(model_bytes: bytes) -> bool:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    ops = schema.BuiltinOperator

    def kind(op: Any) -> int:
        code = m.operatorCodes[op.opcodeIndex]
        return int(max(code.builtinCode, code.deprecatedBuiltinCode))

    def constant(sg: Any, index: int) -> bool:
        if m.buffers[sg.tensors[index].buffer].data is not None:
            return True
        # frozen int8 kernels: DEQUANTIZE of a constant
        return any(
            index in o.outputs and kind(o) == ops.DEQUANTIZE and constant(sg, o.inputs[0])
            for o in sg.operators
        )

    return all(
        constant(sg, op.inputs[1])
        for sg in m.subgraphs
        for op in sg.operators
        if kind(op) == ops.CONV_2D
    )


def test_tensor_names_are_per_kind_indices() -> None:
    names = [t.name for t in build("cnn-fmnist").tensor_specs()]
    assert names == [
        "conv_0_kernel",
        "conv_0_bias",
        "conv_1_kernel",
        "conv_1_bias",
        "dense_0_kernel",
        "dense_0_bias",
    ]


@pytest.mark.parametrize("name", ["mlp-digits", "cnn-fmnist", "transfer-fmnist"])
def test_one_train_step_in_tflite_runtime_equals_tf_autodiff(
    name: str, zoo_artifacts: dict[str, Path], zoo_specs: dict[str, ModelSpec]
) -> None:
    artifact = load_artifact(zoo_artifacts[name])
    spec = zoo_specs[name]
    model = artifact.load()
    names = [t.name for t in artifact.manifest.tensors]
    rng = np.random.default_rng(7)
    params = [
        (rng.normal(size=t.shape) * 0.1).astype(np.float32) for t in artifact.manifest.tensors
    ]
    model.set_weights(**dict(zip(names, params, strict=True)))
    x, y, mask = verification_batch(spec, 32, seed=3)
    loss_ref, grads = reference_gradients(spec, params, x, y, mask)
    lr = np.float32(1e-3 / max(float(np.abs(g).max()) for g in grads))
    loss = model.train(x=x, y=y, mask=mask, lr=lr)["loss"]
    after = model.get_weights()
    assert abs(float(loss) - loss_ref) <= 1e-4 * max(1.0, abs(loss_ref))
    for n, p, g in zip(names, params, grads, strict=True):
        assert np.abs(after[n] - (p - lr * g)).max() <= 1e-5, n
        assert not np.array_equal(after[n], p), f"{n} did not move"


def test_transfer_model_stores_frozen_weights_as_int8(zoo_artifacts: dict[str, Path]) -> None:
    manifest = load_artifact(zoo_artifacts["transfer-fmnist"]).manifest
    size = (zoo_artifacts["transfer-fmnist"] / "model.tflite").stat().st_size
    assert manifest.frozen_param_count > 50_000
    # float32 frozen weights alone would take 4 bytes each
    assert size < 2 * manifest.frozen_param_count
    assert "DEQUANTIZE" in manifest.ops
    assert [t.name for t in manifest.tensors] == ["dense_0_kernel", "dense_0_bias"]


def test_transfer_model_starts_from_its_pretrained_head(
    zoo_artifacts: dict[str, Path], fmnist: tuple[np.ndarray, ...]
) -> None:
    from fedge.edge_client.trainer import LocalTrainer

    _, _, x_te, y_te = fmnist
    trainer = LocalTrainer(load_artifact(zoo_artifacts["transfer-fmnist"]))
    assert trainer.evaluate(x_te[:1000], y_te[:1000]).accuracy > 0.6


def test_pretraining_is_seeded_and_deterministic() -> None:
    x, y, _, _ = load_digits_arrays()
    x = x.reshape(-1, 8, 8, 1)
    extractor = (L.Conv2D(4), L.ReLU(), L.MeanPool2x2(), L.Flatten(), L.Dense(8), L.ReLU())
    head = (L.Dense(10),)
    runs = [pretrain(extractor, head, x, y, seed=s, steps=20, batch_size=16) for s in (5, 5, 6)]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert np.array_equal(a, b)
    for la, lb in zip(runs[0][0].params, runs[1][0].params, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(la, lb, strict=True))
    assert not np.array_equal(runs[0][1][0], runs[2][1][0])


def test_batch_size_override_changes_every_signature(tmp_path: Path) -> None:
    manifest = export_spec(build("mlp-digits"), tmp_path, batch_size=8, seed=1)
    model = load_artifact(tmp_path).load()
    assert manifest.batch_size == 8
    assert model.train.inputs["x"].shape == (8, 64)
    assert model.infer.outputs["logits"].shape == (8, 10)


def test_same_seed_gives_the_same_artifact(tmp_path: Path) -> None:
    a = export_spec(build("mlp-digits"), tmp_path / "a", seed=4)
    b = export_spec(build("mlp-digits"), tmp_path / "b", seed=4)
    c = export_spec(build("mlp-digits"), tmp_path / "c", seed=5)
    assert a.sha256 == b.sha256 != c.sha256


@pytest.mark.parametrize("batch_size", [0, -3, True, 2.5])
def test_bad_batch_size_is_refused(batch_size: Any, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="batch_size"):
        export_spec(build("mlp-digits"), tmp_path, batch_size=batch_size)
    assert not tmp_path.joinpath("model.tflite").exists()


def test_unknown_model_names_the_available_ones(tmp_path: Path) -> None:
    from fedge.model_export import export_model

    with pytest.raises(ArtifactError, match="mlp-digits"):
        export_model("resnet-152", tmp_path)


class _WrongGradReLU(L.ReLU):
    """A ReLU whose builtin-only gradient is twice the true one: verification must catch it."""

    def forward(self, x: tf.Tensor, params: Sequence[tf.Tensor]) -> tf.Tensor:
        @tf.custom_gradient
        def _relu(x: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
            return tf.nn.relu(x), lambda g: 2.0 * g * tf.nn.relu(tf.sign(x))

        return _relu(x)


def test_export_refuses_an_artifact_whose_step_differs_from_tf(tmp_path: Path) -> None:
    spec = ModelSpec("broken", (16,), 3, (L.Dense(8), _WrongGradReLU(), L.Dense(3)))
    with pytest.raises(ArtifactError, match="differs from TF autodiff"):
        export_spec(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_models_built_from_the_layer_library_can_be_registered_and_exported(
    tmp_path: Path,
) -> None:
    @register("test-tiny-cnn")
    def tiny(seed: int) -> ModelSpec:
        return ModelSpec(
            "test-tiny-cnn",
            (9, 9, 2),
            4,
            (
                L.Conv2D(3, stride=2),
                L.ReLU(),
                L.Conv2D(4, padding="VALID"),
                L.ReLU(),
                L.MeanPool2x2(),
                L.Flatten(),
                L.Dense(4),
            ),
            batch_size=5,
        )

    from fedge.model_export import export_model

    manifest = export_model("test-tiny-cnn", tmp_path)
    assert manifest.batch_size == 5 and manifest.input_shape == (9, 9, 2)
    assert load_artifact(tmp_path).manifest == manifest
    with pytest.raises(ArtifactError, match="already registered"):
        register("test-tiny-cnn")(tiny)


def test_a_spec_must_end_in_logits() -> None:
    with pytest.raises(ArtifactError, match="logits"):
        ModelSpec("bad", (8,), 10, (L.Dense(5),))
    with pytest.raises(ArtifactError, match="trainable"):
        ModelSpec("bad", (10,), 10, (L.ReLU(),))


def test_digits_split_is_stratified_scaled_and_seeded() -> None:
    x_tr, y_tr, x_te, y_te = load_digits_arrays(test_fraction=0.25, seed=0)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.shape[1:] == (64,) and len(x_tr) + len(x_te) == 1797
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert abs(len(x_te) / 1797 - 0.25) < 0.01
    assert set(np.unique(y_te)) == set(range(10))
    again = load_digits_arrays(test_fraction=0.25, seed=0)
    assert np.array_equal(again[0], x_tr)
    other = load_digits_arrays(test_fraction=0.25, seed=1)
    assert not np.array_equal(other[0], x_tr)
    with pytest.raises(DataError, match="test_fraction"):
        load_digits_arrays(test_fraction=1.5)


def test_fashion_mnist_loads_scaled_with_a_channel_axis(fmnist: tuple[np.ndarray, ...]) -> None:
    x_tr, y_tr, x_te, y_te = fmnist
    assert x_tr.shape == (60_000, 28, 28, 1) and x_te.shape == (10_000, 28, 28, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert 0.0 <= float(x_te.min()) and float(x_te.max()) <= 1.0
    assert set(np.unique(y_te)) == set(range(10))


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
