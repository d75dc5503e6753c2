"""The interpreter shim: backend choice, fast signatures, flatbuffer bounds checks."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.flatbuffer_check import check_flatbuffer
from fedge.edge_client.runtime import (
    Signature,
    make_interpreter,
    runtime_name,
    runtime_version,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_bytes(mlp_artifact: Path) -> bytes:
    return (mlp_artifact / "model.tflite").read_bytes()


def test_tflite_runtime_is_preferred_and_reports_its_version() -> None:
    assert runtime_name() == "tflite-runtime"
    assert runtime_version() == "2.14.0"


def test_edge_runtime_does_not_import_tensorflow() -> None:
    code = (
        "import sys, fedge.edge_client.runtime as r, fedge.edge_client.artifact, "
        "fedge.edge_client.trainer, fedge.edge_client.data; r.backend(); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_signatures_run_and_expose_their_tensors(model_bytes: bytes) -> None:
    interpreter = make_interpreter(model_bytes, num_threads=2)
    infer = Signature(interpreter, "infer")
    assert infer.inputs["x"].shape == (32, 64) and infer.inputs["x"].dtype == np.float32
    logits = infer(x=np.zeros((32, 64), np.float32))["logits"]
    assert logits.shape == (32, 10)
    # the fast path gives the same answer as the checked call
    x = np.random.default_rng(0).uniform(size=(32, 64)).astype(np.float32)
    infer.setter("x")(x)
    infer.invoker()()
    assert np.array_equal(infer.getter("logits")(), infer(x=x)["logits"])


def test_signature_calls_are_checked(model_bytes: bytes) -> None:
    interpreter = make_interpreter(model_bytes)
    with pytest.raises(ArtifactError, match="signature 'predict' missing.*infer"):
        Signature(interpreter, "predict")
    train = Signature(interpreter, "train")
    with pytest.raises(ArtifactError, match="takes inputs"):
        train(x=np.zeros((32, 64), np.float32))
    with pytest.raises(ArtifactError, match="input 'x' needs shape \\(32, 64\\)"):
        train(
            x=np.zeros((16, 64), np.float32),
            y=np.zeros(32, np.int32),
            mask=np.ones(32, np.float32),
            lr=0.1,
        )


def test_xnnpack_is_applied_by_default_and_can_be_turned_off(model_bytes: bytes) -> None:
    x = np.random.default_rng(1).uniform(size=(32, 64)).astype(np.float32)
    logits = {}
    for xnnpack in (True, False):
        interpreter = make_interpreter(model_bytes, xnnpack=xnnpack)
        delegated = [op for op in interpreter._get_ops_details() if op["op_name"] == "DELEGATE"]
        assert bool(delegated) == xnnpack
        logits[xnnpack] = Signature(interpreter, "infer")(x=x)["logits"]
    np.testing.assert_allclose(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def test_a_signature_keeps_its_interpreter_and_model_bytes_alive(mlp_artifact: Path) -> None:
    """The native interpreter reads constants from the bytes the Python object holds."""
    x = np.random.default_rng(2).uniform(size=(32, 64)).astype(np.float32)
    model = (mlp_artifact / "model.tflite").read_bytes()
    want = Signature(make_interpreter(model), "infer")(x=x)["logits"]
    infer = Signature(make_interpreter(bytes(bytearray(model))), "infer")
    gc.collect()
    for _ in range(3):
        np.testing.assert_array_equal(infer(x=x)["logits"], want)


@pytest.mark.parametrize("threads", [0, -1, 1.5, None])
def test_bad_thread_counts_are_refused(threads: object, model_bytes: bytes) -> None:
    with pytest.raises(ArtifactError, match="num_threads"):
        make_interpreter(model_bytes, num_threads=threads)  # type: ignore[arg-type]


def test_non_bytes_models_are_refused(model_bytes: bytes) -> None:
    with pytest.raises(ArtifactError, match="bytes"):
        make_interpreter(bytearray(model_bytes))  # type: ignore[arg-type]


def test_flatbuffer_check_names_what_is_wrong(model_bytes: bytes) -> None:
    check_flatbuffer(model_bytes)
    with pytest.raises(ArtifactError, match="TFL3"):
        check_flatbuffer(b"")
    with pytest.raises(ArtifactError, match="TFL3"):
        check_flatbuffer(b"\x00" * 4 + b"PK\x03\x04" + model_bytes[8:])
    bad = bytearray(model_bytes)
    bad[0:4] = (len(bad) + 100).to_bytes(4, "little")
    with pytest.raises(ArtifactError, match="outside"):
        check_flatbuffer(bytes(bad))


_SWEEP = """
import sys
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import make_interpreter
model = open(sys.argv[1], "rb").read()
lengths = sorted(set(range(0, 600)) | set(range(600, len(model), 53)))
refused = loaded = 0
for n in lengths:
    try:
        make_interpreter(model[:n])
        loaded += 1
    except ArtifactError:
        refused += 1
print(refused, loaded)
"""


def test_truncated_models_never_crash_the_process(mlp_artifact: Path) -> None:
    """Without the bounds check, the interpreter segfaults on many of these prefixes."""
    out = subprocess.run(
        [sys.executable, "-c", _SWEEP, str(mlp_artifact / "model.tflite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-500:]}"
    refused, loaded = map(int, out.stdout.split())
    assert refused > 600 and loaded == 0
