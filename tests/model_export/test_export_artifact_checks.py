"""Every bad-artifact case gets a clear ArtifactError from load_artifact / Artifact.from_bytes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from fedge.edge_client.artifact import Artifact, Manifest, TensorSpec, load_artifact
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import make_interpreter
from fedge.model_export import ModelSpec, build, op_names
from fedge.model_export import layers as L
from fedge.model_export.exporter import _ArtifactModule


@pytest.fixture(scope="module")
def mlp(zoo_artifacts: dict[str, Path]) -> tuple[dict[str, Any], bytes]:
    out = zoo_artifacts["mlp-digits"]
    return json.loads((out / "manifest.json").read_text()), (out / "model.tflite").read_bytes()


def _write(directory: Path, manifest: dict[str, Any], model: bytes, *, fix_sha: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest)
    if fix_sha:
        manifest["sha256"] = hashlib.sha256(model).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "model.tflite").write_bytes(model)
    return directory


def _convert(module: _ArtifactModule, keys: list[str], ops: list[Any]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        sigs = {k: v for k, v in module.signatures().items() if k in keys}
        tf.saved_model.save(module, tmp, signatures=sigs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=keys)
        converter.target_spec.supported_ops = ops
        converter.experimental_enable_resource_variables = True
        return bytes(converter.convert())


def test_the_good_artifact_loads(mlp: tuple[dict[str, Any], bytes], tmp_path: Path) -> None:
    artifact = load_artifact(_write(tmp_path, *mlp, fix_sha=False))
    assert artifact.manifest.model == "mlp-digits"
    assert artifact.model_bytes == mlp[1]


def test_truncated_download_is_a_digest_mismatch(
    mlp: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    manifest, model = mlp
    with pytest.raises(ArtifactError, match="sha256 mismatch.*truncated or corrupt"):
        load_artifact(_write(tmp_path, manifest, model[: len(model) // 2], fix_sha=False))


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, 0.9, -1])
def test_truncated_flatbuffer_is_refused_even_with_a_matching_digest(
    keep: float, mlp: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    manifest, model = mlp
    n = int(len(model) * keep) if isinstance(keep, float) else keep % len(model)
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_artifact(_write(tmp_path, manifest, model[:n], fix_sha=True))


def test_corrupt_bytes_are_a_digest_mismatch(
    mlp: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    manifest, model = mlp
    bad = bytearray(model)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(_write(tmp_path, manifest, bytes(bad), fix_sha=False))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [(4, b"XXXX", "TFL3"), (0, b"\xff\xff\xff\x7f", "outside"), (0, b"\x00\x00\x00\x00", "")],
)
def test_corrupt_flatbuffer_is_refused_even_with_a_matching_digest(
    offset: int, value: bytes, message: str, mlp: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    manifest, model = mlp
    bad = bytearray(model)
    bad[offset : offset + len(value)] = value
    with pytest.raises(ArtifactError, match=f"truncated or corrupt.*{message}"):
        load_artifact(_write(tmp_path, manifest, bytes(bad), fix_sha=True))


def test_digest_mismatch_names_both_digests(
    mlp: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    manifest, model = mlp
    wrong = dict(manifest, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ArtifactError, match=f"{wrong['sha256']}.*{manifest['sha256']}"):
        load_artifact(_write(tmp_path, wrong, model, fix_sha=False))


def test_manifest_tensor_shape_mismatch(mlp: tuple[dict[str, Any], bytes], tmp_path: Path) -> None:
    manifest, model = mlp
    tensors = [dict(t) for t in manifest["tensors"]]
    tensors[0]["shape"] = [64, 16]
    bad = dict(
        manifest,
        tensors=tensors,
        param_count=sum(int(np.prod(t["shape"])) for t in tensors),
    )
    with pytest.raises(ArtifactError, match="manifest/tensor mismatch.*dense_0_kernel"):
        load_artifact(_write(tmp_path, bad, model, fix_sha=False))


def test_manifest_tensor_name_mismatch(mlp: tuple[dict[str, Any], bytes], tmp_path: Path) -> None:
    manifest, model = mlp
    tensors = [dict(t) for t in manifest["tensors"]]
    tensors[1]["name"] = "dense_0_offset"
    with pytest.raises(ArtifactError, match="manifest/tensor mismatch.*dense_0_offset"):
        load_artifact(_write(tmp_path, dict(manifest, tensors=tensors), model, fix_sha=False))


def test_wrong_input_shape(mlp: tuple[dict[str, Any], bytes], tmp_path: Path) -> None:
    manifest, model = mlp
    with pytest.raises(ArtifactError, match="wrong input shape.*\\[8, 8\\]"):
        load_artifact(_write(tmp_path, dict(manifest, input_shape=[8, 8]), model, fix_sha=False))
    with pytest.raises(ArtifactError, match="wrong input shape"):
        load_artifact(_write(tmp_path, dict(manifest, batch_size=16), model, fix_sha=False))


def test_missing_signature(mlp: tuple[dict[str, Any], bytes], tmp_path: Path) -> None:
    manifest, _ = mlp
    spec = build("mlp-digits")
    module = _ArtifactModule(spec, spec.init_params(0), 32)
    keys = ["train", "evaluate", "infer", "get_weights"]
    model = _convert(module, keys, [tf.lite.OpsSet.TFLITE_BUILTINS])
    bad = dict(manifest, ops=op_names(model))
    with pytest.raises(ArtifactError, match="signature 'set_weights' missing"):
        load_artifact(_write(tmp_path, bad, model, fix_sha=True))


class _CumprodLayer(L.Layer):
    """x + 0 * cumprod(x): Cumprod has no TFLite builtin, so it needs Flex."""

    kind = "cumprod"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def forward(self, x: tf.Tensor, params: Any) -> tf.Tensor:
        return x + 0.0 * tf.stop_gradient(tf.math.cumprod(x, axis=1))

    reference = forward


@pytest.fixture(scope="module")
def flex_model() -> bytes:
    spec = ModelSpec("flexy", (6,), 3, (L.Dense(4), _CumprodLayer(), L.Dense(3)), batch_size=4)
    module = _ArtifactModule(spec, spec.init_params(0), 4)
    with pytest.raises(ArtifactError, match="conversion"):
        from fedge.model_export.exporter import convert

        convert(spec, spec.init_params(0), 4)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return _convert(module, ["train", "evaluate", "infer", "get_weights", "set_weights"], ops)


def _flex_manifest(model: bytes, ops: list[str]) -> dict[str, Any]:
    tensors = [TensorSpec("dense_0_kernel", (6, 4)), TensorSpec("dense_0_bias", (4,))]
    tensors += [TensorSpec("dense_1_kernel", (4, 3)), TensorSpec("dense_1_bias", (3,))]
    return Manifest(
        model="flexy",
        input_shape=(6,),
        input_dtype="float32",
        num_classes=3,
        batch_size=4,
        tensors=tuple(tensors),
        param_count=43,
        frozen_param_count=0,
        sha256=hashlib.sha256(model).hexdigest(),
        ops=tuple(ops),
        exporter_version="test",
    ).to_dict()


def test_flex_ops_listed_in_the_manifest_are_refused(flex_model: bytes, tmp_path: Path) -> None:
    ops = op_names(flex_model)
    assert any(op.startswith("Flex") for op in ops)
    with pytest.raises(ArtifactError, match="Flex ops present.*FlexCumprod"):
        load_artifact(_write(tmp_path, _flex_manifest(flex_model, ops), flex_model, fix_sha=False))


def test_flex_ops_hidden_from_the_manifest_are_found_in_the_flatbuffer(
    flex_model: bytes, tmp_path: Path
) -> None:
    ops = [op for op in op_names(flex_model) if not op.startswith("Flex")]
    with pytest.raises(ArtifactError, match="Flex ops present.*FlexCumprod"):
        load_artifact(_write(tmp_path, _flex_manifest(flex_model, ops), flex_model, fix_sha=False))
    with pytest.raises(ArtifactError, match="Flex ops present"):
        make_interpreter(flex_model)


_DEVICE_SCRIPT = """
import sys
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import Signature, backend
assert "tensorflow" not in sys.modules
model = open(sys.argv[1], "rb").read()
interpreter = backend().interpreter_cls(model_content=model, num_threads=1)
try:
    Signature(interpreter, "infer")
except ArtifactError as exc:
    print(exc)
    sys.exit(0)
sys.exit(3)
"""


def test_runtime_flex_failure_is_translated_on_a_device_without_tensorflow(
    flex_model: bytes, tmp_path: Path
) -> None:
    """With TF loaded the Flex delegate is found in-process, so run the device side alone."""
    path = tmp_path / "flex.tflite"
    path.write_bytes(flex_model)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT, str(path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Flex ops present" in proc.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format_version", 2),
        ("format_version", "1"),
        ("model", ""),
        ("model", 7),
        ("input_shape", []),
        ("input_shape", [64, 0]),
        ("input_shape", "64"),
        ("input_dtype", "float64"),
        ("num_classes", 1),
        ("num_classes", True),
        ("batch_size", "32"),
        ("batch_size", 0),
        ("tensors", []),
        ("tensors", [{"name": "a b", "shape": [1], "dtype": "float32"}]),
        ("tensors", [{"name": "a", "shape": [1]}]),
        ("param_count", 7),
        ("frozen_param_count", -1),
        ("sha256", "ABC"),
        ("ops", "CONV_2D"),
        ("ops", [1, 2]),
        ("exporter_version", None),
    ],
)
def test_each_bad_manifest_field_is_named(
    field: str, value: Any, mlp: tuple[dict[str, Any], bytes]
) -> None:
    manifest, model = mlp
    with pytest.raises(ArtifactError, match=field if field != "tensors" else "tensors"):
        Artifact.from_bytes(json.dumps(dict(manifest, **{field: value})).encode(), model)


def test_duplicate_tensor_names_are_refused(mlp: tuple[dict[str, Any], bytes]) -> None:
    manifest, model = mlp
    tensors = [dict(t) for t in manifest["tensors"]]
    tensors[1] = dict(tensors[0])
    bad = dict(manifest, tensors=tensors, param_count=2 * 64 * 32 + 32 * 10 + 10)
    with pytest.raises(ArtifactError, match="duplicate"):
        Artifact.from_bytes(json.dumps(bad).encode(), model)


def test_missing_and_unknown_manifest_fields_are_named(mlp: tuple[dict[str, Any], bytes]) -> None:
    manifest, model = mlp
    missing = {k: v for k, v in manifest.items() if k != "ops"}
    with pytest.raises(ArtifactError, match="missing fields \\['ops'\\]"):
        Artifact.from_bytes(json.dumps(missing).encode(), model)
    with pytest.raises(ArtifactError, match="unknown fields \\['extra'\\]"):
        Artifact.from_bytes(json.dumps(dict(manifest, extra=1)).encode(), model)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'"manifest"'])
def test_manifest_that_is_not_a_json_object(raw: bytes, mlp: tuple[dict[str, Any], bytes]) -> None:
    with pytest.raises(ArtifactError, match="manifest"):
        Artifact.from_bytes(raw, mlp[1])


def test_missing_files_are_named(mlp: tuple[dict[str, Any], bytes], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest.json"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(mlp[0]))
    with pytest.raises(ArtifactError, match="model.tflite"):
        load_artifact(tmp_path)


def test_manifest_round_trips_through_dict_and_json(mlp: tuple[dict[str, Any], bytes]) -> None:
    manifest = Manifest.from_dict(mlp[0])
    assert manifest.to_dict() == mlp[0]
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert manifest.tensors[0] == TensorSpec("dense_0_kernel", (64, 32), "float32")
