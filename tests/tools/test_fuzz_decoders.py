"""Decoders fed random and mutated input raise only the project's typed errors (FedgeError).

Every test feeds one decoder bytes or structures an attacker or a corrupt link could produce:
random data, valid messages with bytes flipped, inserted or cut, and valid structures with
fields replaced by values of any type. Anything but a ``FedgeError`` subclass escaping is a bug.
TFLite models are loaded in a child process so that an interpreter crash fails the test
instead of killing the test run.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from fedge.edge_client.artifact import MANIFEST_FILE, MODEL_FILE, Artifact
from fedge.edge_client.codec import decode_update, encode_update, parse_spec
from fedge.edge_client.codec.layout import check_shapes, fingerprint
from fedge.edge_client.errors import FedgeError
from fedge.edge_client.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol.envelope import HEADER_FIELDS, Envelope, unpack
from fedge.edge_client.secagg import SecAggConfig, decode_message
from fedge.edge_client.secagg.keys import KEY_BYTES, SHARE_CIPHERTEXT_BYTES
from fedge.edge_client.secagg.shamir import SHARE_BYTES
from fedge.edge_client.weights import pack_weights, unpack_weights
from fedge.server.job import parse_job_config

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SHAPES = [(7, 5), (5,), (3, 4)]
SEED = 7
DIGEST = "ab" * 32

# --- strategies --------------------------------------------------------------------------

LEAVES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=16)
          | st.binary(max_size=48))


def values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Anything msgpack can carry: scalars, bytes, and nested lists and maps."""
    return st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(keys, inner, max_size=5), max_leaves=10)


Mutation = tuple[str, int, bytes]
MUTATIONS = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "truncate"]),
                               st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=6)


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    """Overwrite, insert, delete or cut bytes at the given offsets (wrapped to the length)."""
    buf = bytearray(data)
    for op, pos, chunk in ops:
        at = pos % (len(buf) + 1)
        if op == "set":
            buf[at:at + len(chunk)] = chunk
        elif op == "insert":
            buf[at:at] = chunk
        elif op == "delete":
            del buf[at:at + len(chunk)]
        else:
            del buf[at:]
    return bytes(buf)


@st.composite
def perturbed(draw: st.DrawFn, valid: Any, keys: st.SearchStrategy[str],
              anything: st.SearchStrategy[Any]) -> Any:
    """``valid`` with some entries, at any depth, replaced by ``anything``, removed, or added."""
    if isinstance(valid, dict):
        out = {}
        for key, value in valid.items():
            action = draw(st.sampled_from(["keep", "keep", "recurse", "replace", "drop"]))
            if action == "keep":
                out[key] = value
            elif action == "recurse":
                out[key] = draw(perturbed(value, keys, anything))
            elif action == "replace":
                out[key] = draw(anything)
        out |= draw(st.dictionaries(keys, anything, max_size=2))
        return out
    if isinstance(valid, list) and valid and draw(st.booleans()):
        return [draw(perturbed(v, keys, anything)) for v in valid]
    return draw(st.sampled_from([valid, None])) if draw(st.booleans()) else draw(anything)


def typed_errors_only(decode: Callable[[], object]) -> None:
    """Run ``decode``; a FedgeError is a proper refusal, any other exception fails the test."""
    with suppress(FedgeError):
        decode()


# --- envelopes and messages --------------------------------------------------------------

REF = m.BlobRef(sha256=DIGEST, url=f"https://127.0.0.1:8443/v1/blobs/{DIGEST}",
                signature=bytes(64), size=1000)
MESSAGES: list[m.Message] = [
    m.CheckIn(eligibility=m.Eligibility(), runtime="tflite_runtime", runtime_version="2.14.0",
              examples=300, cached_artifacts=[DIGEST], identity_key=bytes(32)),
    m.Task(kind="train", model=REF, manifest=REF, weights=REF,
           plan=m.TrainingPlan(epochs=1, lr=0.1, max_steps=50), codec="topk:0.1+q8",
           deadline=time.time() + 60, round_seed=SEED,
           secagg=m.SecAggTask(round_id="r.1.1", config=SecAggConfig(fleet="f", dimension=9),
                               clip=1.0, bits=16, n_max=5, max_weight=100, stage_timeout_s=15.0),
           dp=m.DPTask(mode="central", clip=1.0),
           weights_delta=REF, delta_base=DIGEST),
    m.RetryLater(reason="not selected", retry_after_s=5.0),
    m.Update(payload=b"\x93\x01\xc4\x00\x90", base_weights=m.base_digest(DIGEST),
             metrics=m.TrainMetrics(loss=0.5, accuracy=0.9, examples=300, train_time_s=1.5),
             within_clip=True),
    m.EvalResult(loss=0.4, accuracy=0.8, examples=100),
    m.Ack(accepted=False, reason="late"),
    m.ErrorReport(code="ArtifactError", message="bad signature"),
    m.SecAggStage(stage="advertise", data={"t": "secagg/advertise", "round": "r1"}),
    m.Presence(online=True, profile="pi4"),
    m.JobState(state="finished"),
    m.RoundOpen(round=3, wake_probability=0.25),
]
ENVELOPES = [m.make(msg, job_id="job", round_id=1).pack() for msg in MESSAGES]
RAW_ENVELOPES = [msgpack.unpackb(e, raw=False) for e in ENVELOPES]  # positional arrays
BODIES = [(msg.TYPE, raw[HEADER_FIELDS.index("body")])
          for msg, raw in zip(MESSAGES, RAW_ENVELOPES, strict=True)]


def _keys_of(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys_of(inner)


FIELD_NAMES = st.sampled_from(sorted({k for _, body in BODIES for k in _keys_of(body)})) \
    | st.text(max_size=8)
FIELD_VALUES = values(FIELD_NAMES)


def decode_envelope(data: bytes) -> None:
    typed_errors_only(lambda: m.parse(unpack(data, "dev-1", check_time=False)))


@FUZZ
@given(st.binary(max_size=512))
def test_envelope_of_random_bytes(data: bytes) -> None:
    decode_envelope(data)


@FUZZ
@given(st.sampled_from(ENVELOPES), MUTATIONS)
def test_envelope_with_mutated_bytes(valid: bytes, ops: list[Mutation]) -> None:
    decode_envelope(mutate(valid, ops))


@FUZZ
@given(values(st.text(max_size=6)))
def test_envelope_of_random_structures(raw: Any) -> None:
    decode_envelope(msgpack.packb(raw, use_bin_type=True))


@FUZZ
@given(st.sampled_from(RAW_ENVELOPES).flatmap(lambda raw: perturbed(raw, FIELD_NAMES,
                                                                    FIELD_VALUES)))
def test_envelope_headers_with_fields_of_any_type(raw: Any) -> None:
    decode_envelope(msgpack.packb(raw, use_bin_type=True))


@FUZZ
@given(st.sampled_from(BODIES).flatmap(
    lambda tb: st.tuples(st.just(tb[0]), perturbed(tb[1], FIELD_NAMES, FIELD_VALUES))))
def test_message_bodies_with_fields_of_any_type(typed_body: tuple[str, Any]) -> None:
    msg_type, body = typed_body
    envelope = Envelope(type=msg_type, body=body if isinstance(body, dict | list) else [body])
    decode_envelope(envelope.pack())


# --- the update codec --------------------------------------------------------------------

SPECS = ["none", "topk:0.2+q8", "randk:0.25+q4+rot", "q2:block=16", "topk:0.5:tensor+q16",
         "clip:1+randk:0.5:tensor"]


def _payload(spec: str) -> bytes:
    rng = np.random.default_rng(0)
    delta = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    return encode_update(delta, parse_spec(spec), SHAPES, round_seed=SEED,
                         rng=np.random.default_rng(1))


PAYLOADS = {spec: _payload(spec) for spec in SPECS}


def decode_payload(spec: str, payload: bytes) -> None:
    typed_errors_only(lambda: decode_update(payload, parse_spec(spec), SHAPES, round_seed=SEED))


@FUZZ
@given(st.sampled_from(SPECS), st.binary(max_size=400))
def test_codec_random_payloads(spec: str, payload: bytes) -> None:
    decode_payload(spec, payload)


@FUZZ
@given(st.sampled_from(SPECS), MUTATIONS)
def test_codec_mutated_payloads(spec: str, ops: list[Mutation]) -> None:
    decode_payload(spec, mutate(PAYLOADS[spec], ops))


ANY_VALUE = values(st.text(max_size=8))
SECTION_FIELD = st.none() | st.binary(max_size=300) | ANY_VALUE


@FUZZ
@given(st.sampled_from(SPECS), st.one_of(st.just(1), ANY_VALUE), st.booleans(),
       st.lists(st.one_of(st.lists(SECTION_FIELD, min_size=3, max_size=3), ANY_VALUE),
                max_size=4))
def test_codec_structured_payloads(spec: str, version: Any, right_print: bool,
                                   sections: list[Any]) -> None:
    parsed = parse_spec(spec)
    print_ = fingerprint(parsed, check_shapes(SHAPES)) if right_print else version
    decode_payload(spec, msgpack.packb([version, print_, sections], use_bin_type=True))


# --- weights blobs -----------------------------------------------------------------------

WEIGHTS = pack_weights([np.ones(s, np.float32) for s in SHAPES])
WEIGHTS_DICT = msgpack.unpackb(WEIGHTS, raw=False)
TENSOR_KEYS = st.sampled_from(["format", "tensors", "dtype", "shape", "data"]) | st.text(max_size=6)


def decode_weights(blob: bytes) -> None:
    typed_errors_only(lambda: unpack_weights(blob, SHAPES))


@FUZZ
@given(st.binary(max_size=400))
def test_weights_random_bytes(blob: bytes) -> None:
    decode_weights(blob)


@FUZZ
@given(MUTATIONS)
def test_weights_mutated_bytes(ops: list[Mutation]) -> None:
    decode_weights(mutate(WEIGHTS, ops))


@FUZZ
@given(perturbed(WEIGHTS_DICT, TENSOR_KEYS, values(TENSOR_KEYS)))
@example({"format": WEIGHTS_DICT["format"],  # a dtype that is not hashable
          "tensors": [{"dtype": [], "shape": [7, 5], "data": bytes(140)},
                      *WEIGHTS_DICT["tensors"][1:]]})
def test_weights_structures_with_fields_of_any_type(raw: Any) -> None:
    decode_weights(msgpack.packb(raw, use_bin_type=True))


# --- secure-aggregation messages ---------------------------------------------------------

ADVERTISE = {"t": "secagg/advertise", "round": "r1", "device": "dev-0001",
             "c_pk": bytes(KEY_BYTES), "s_pk": bytes(KEY_BYTES), "b_commit": bytes(KEY_BYTES),
             "id_pk": bytes(PUBLIC_KEY_BYTES), "sig": bytes(SIGNATURE_BYTES),
             "cert": {"fleet": "f", "device": "dev-0001", "key": bytes(PUBLIC_KEY_BYTES),
                      "sig": bytes(SIGNATURE_BYTES)}}
SECAGG: list[dict[str, Any]] = [
    ADVERTISE,
    {"t": "secagg/roster", "round": "r1", "seed": bytes(KEY_BYTES), "k": 2, "thr": 2,
     "devices": ["dev-0001", "dev-0002"], "ads": [ADVERTISE]},
    {"t": "secagg/share", "round": "r1", "shares": {"dev-0002": bytes(SHARE_CIPHERTEXT_BYTES)}},
    {"t": "secagg/masked-request", "round": "r1",
     "shares": {"dev-0002": bytes(SHARE_CIPHERTEXT_BYTES)}},
    {"t": "secagg/masked", "round": "r1", "y": bytes(16)},
    {"t": "secagg/unmask-request", "round": "r1", "survivors": ["dev-0001"],
     "dropped": ["dev-0002"]},
    {"t": "secagg/unmask", "round": "r1", "b": {"dev-0001": bytes(SHARE_BYTES)},
     "s": {"dev-0002": bytes(SHARE_BYTES)}},
]
SECAGG_KEYS = st.sampled_from(sorted({k for d in SECAGG for k in _keys_of(d)})) \
    | st.text(max_size=6)
SECAGG_VALUES = values(SECAGG_KEYS)


def test_secagg_samples_are_valid() -> None:
    assert [type(decode_message(d)).TYPE for d in SECAGG] == [d["t"] for d in SECAGG]


@FUZZ
@given(st.sampled_from(SECAGG).flatmap(lambda d: perturbed(d, SECAGG_KEYS, SECAGG_VALUES)))
def test_secagg_messages_with_fields_of_any_type(raw: Any) -> None:
    typed_errors_only(lambda: decode_message(raw))


@FUZZ
@given(st.sampled_from(SECAGG), MUTATIONS)
def test_secagg_messages_from_mutated_bytes(valid: dict[str, Any], ops: list[Mutation]) -> None:
    data = mutate(msgpack.packb(valid, use_bin_type=True), ops)
    try:  # the server hands decode_message what msgpack decoded from an envelope body
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - msgpack's own refusals are not under test here
        return
    typed_errors_only(lambda: decode_message(raw))


# --- job configuration -------------------------------------------------------------------

JOB: dict[str, dict[str, Any]] = {
    "job": {"name": "digits", "fleet": "lab", "artifact": "artifact", "rounds": 3, "seed": 1,
            "codec": "topk:0.1+q8", "dp": "central:1.0:1.0"},
    "selection": {"target_reports": 4, "over_selection": 1.3, "min_reports": 3,
                  "selection_timeout_s": 10.0, "round_deadline_s": 30.0, "min_battery": 0.2},
    "training": {"local_epochs": 1, "lr": 0.1, "lr_schedule": "step", "lr_decay": 0.5,
                 "max_steps": 100},
    "server_optimizer": {"name": "fedadam", "lr": 0.01, "beta1": 0.9},
    "evaluation": {"central_every": 1, "central_data": "central.npz", "federated_every": 2},
    "secagg": {"enabled": False, "k": 4},
}
JOB_KEYS = st.sampled_from(sorted({k for k in _keys_of(JOB)})) | st.text(max_size=6)
TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JOB_KEYS, inner, max_size=4),
    max_leaves=12)


@st.composite
def job_tables(draw: st.DrawFn) -> dict[str, Any]:
    """The valid job with entries replaced by TOML values of any type, dropped, or added."""
    out: dict[str, Any] = {}
    for table, fields in JOB.items():
        if draw(st.integers(0, 9)) == 0:
            continue
        if draw(st.integers(0, 9)) == 0:
            out[table] = draw(TOML_VALUES)
            continue
        out[table] = {k: draw(TOML_VALUES) if draw(st.integers(0, 3)) == 0 else v
                      for k, v in fields.items() if draw(st.integers(0, 9))}
    return out


def test_job_sample_is_valid(tmp_path: Path) -> None:
    assert parse_job_config(JOB, tmp_path).rounds == 3


@FUZZ
@given(job_tables())
def test_job_config_with_values_of_any_type(tmp_path: Path, raw: dict[str, Any]) -> None:
    typed_errors_only(lambda: parse_job_config(raw, tmp_path))


# --- model artifacts (manifest + TFLite flatbuffer) --------------------------------------

WORKER = """
import struct, sys
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.errors import FedgeError
read, write = sys.stdin.buffer.read, sys.stdout.buffer.write
while header := read(8):
    n_manifest, n_model = struct.unpack("<II", header)
    manifest, model = read(n_manifest), read(n_model)
    try:
        Artifact.from_bytes(manifest, model)
        verdict = "ok"
    except FedgeError as exc:
        verdict = "refused " + type(exc).__name__
    except BaseException as exc:
        verdict = f"LEAK {type(exc).__module__}.{type(exc).__name__}: {exc}"
    write(verdict.replace("\\n", " ").encode() + b"\\n")
    sys.stdout.flush()
"""


class ArtifactLoader:
    """``Artifact.from_bytes`` in a child process: an interpreter crash (SIGSEGV) becomes a
    verdict instead of the end of the test run; the child is restarted after a crash."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.repo,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)

    def load(self, manifest: bytes, model: bytes) -> str:
        """"ok", "refused <ErrorType>", "LEAK <type>: <message>" or "CRASH signal <n>"."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(struct.pack("<II", len(manifest), len(model)) + manifest + model)
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = b""
        if line:
            return line.decode().strip()
        code = self.proc.wait(timeout=30)
        self.proc = self._start()
        return f"CRASH signal {-code}" if code < 0 else f"CRASH exit {code}"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def loader() -> Iterator[ArtifactLoader]:
    worker = ArtifactLoader(Path(__file__).resolve().parents[2])
    yield worker
    worker.close()


class ArtifactFiles(tuple[dict[str, Any], bytes]):
    """(manifest dict, model bytes) with a short repr for failure reports."""

    def __repr__(self) -> str:
        return f"<mlp-digits manifest + {len(self[1])}-byte model>"


@pytest.fixture(scope="module")
def artifact_files(mlp_artifact: Path) -> ArtifactFiles:
    manifest = json.loads((mlp_artifact / MANIFEST_FILE).read_text())
    return ArtifactFiles((manifest, (mlp_artifact / MODEL_FILE).read_bytes()))


def check_verdict(verdict: str, model: bytes, tmp_dir: Path) -> None:
    """Pass on "ok" or a typed refusal; otherwise fail, keeping the model for a reproduction."""
    if verdict == "ok" or verdict.startswith("refused "):
        return
    saved = tmp_dir / f"model-{hashlib.sha256(model).hexdigest()[:16]}.tflite"
    saved.write_bytes(model)
    if verdict.startswith("CRASH"):  # its own line: Hypothesis reports each failing line
        raise AssertionError(f"Artifact.from_bytes crashed the process: {verdict} ({saved})")
    raise AssertionError(f"Artifact.from_bytes leaked: {verdict} ({saved})")


def test_artifact_sample_loads(loader: ArtifactLoader, artifact_files: ArtifactFiles) -> None:
    manifest, model = artifact_files
    assert loader.load(json.dumps(manifest).encode(), model) == "ok"
    assert Artifact.from_bytes(json.dumps(manifest).encode(), model).manifest.sha256 == \
        manifest["sha256"]


MANIFEST_KEYS = st.sampled_from(["format_version", "model", "input_shape", "input_dtype",
                                 "num_classes", "batch_size", "tensors", "param_count",
                                 "frozen_param_count", "sha256", "ops", "exporter_version",
                                 "name", "shape", "dtype"]) | st.text(max_size=6)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(MANIFEST_KEYS, inner, max_size=4),
    max_leaves=12)


@FUZZ
@given(data=st.data())
def test_artifact_manifest_with_fields_of_any_type(
        loader: ArtifactLoader, artifact_files: ArtifactFiles, tmp_path_factory:
        pytest.TempPathFactory, data: st.DataObject) -> None:
    manifest, model = artifact_files
    changed = data.draw(perturbed(manifest, MANIFEST_KEYS, JSON_VALUES))
    try:
        text = json.dumps(changed, allow_nan=False).encode()
    except ValueError:  # non-finite floats are not JSON
        return
    check_verdict(loader.load(text, model), model, tmp_path_factory.getbasetemp())


@FUZZ
@given(MUTATIONS)
def test_artifact_manifest_with_mutated_bytes(
        loader: ArtifactLoader, artifact_files: ArtifactFiles,
        tmp_path_factory: pytest.TempPathFactory, ops: list[Mutation]) -> None:
    manifest, model = artifact_files
    text = mutate(json.dumps(manifest).encode(), ops)
    check_verdict(loader.load(text, model), model, tmp_path_factory.getbasetemp())


def test_artifact_manifest_nested_too_deep_is_refused(loader: ArtifactLoader,
                                                      artifact_files: ArtifactFiles) -> None:
    _, model = artifact_files
    verdict = loader.load(b"[" * 100_000, model)  # under the 1 MiB manifest limit
    assert verdict.startswith("refused "), verdict


@settings(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # a crash costs a restart
@given(MUTATIONS)
def test_artifact_model_with_mutated_bytes(
        loader: ArtifactLoader, artifact_files: ArtifactFiles,
        tmp_path_factory: pytest.TempPathFactory, ops: list[Mutation]) -> None:
    manifest, model = artifact_files
    changed = mutate(model, ops)
    signed = dict(manifest, sha256=hashlib.sha256(changed).hexdigest())  # as a signer would
    verdict = loader.load(json.dumps(signed).encode(), changed)
    check_verdict(verdict, changed, tmp_path_factory.getbasetemp())


# Two corruptions random mutation finds about once in a hundred tries, built on purpose with
# TensorFlow's reader of the TFLite schema so that they do not depend on the export's layout.


def _non_utf8_tensor_name(model: bytes) -> bytes:
    """The ``infer`` output tensor renamed to bytes that are not UTF-8."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    infer = next(s for s in tree.signatureDefs if s.signatureKey == b"infer")
    tensor = tree.subgraphs[infer.subgraphIndex].tensors[infer.outputs[0].tensorIndex]
    tensor.name = b"\xac" + tensor.name
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _var_handle_name_out_of_bounds(model: bytes) -> bytes:
    """The first VAR_HANDLE's ``shared_name`` string offset pointing far past the buffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    graph = root.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.BuiltinOptionsType() == schema.BuiltinOptions.VarHandleOptions:
            table = op.BuiltinOptions()
            options = schema.VarHandleOptions()
            options.Init(table.Bytes, table.Pos)
            field = table.Pos + options._tab.Offset(6)  # slot 1: shared_name
            out = bytearray(model)
            struct.pack_into("<I", out, field, 0x7FFFFF00)
            return bytes(out)
    raise AssertionError("the model has no VAR_HANDLE operator")


@pytest.mark.parametrize("corrupt", [_non_utf8_tensor_name, _var_handle_name_out_of_bounds],
                         ids=["tensor-name-not-utf8", "var-handle-name-out-of-bounds"])
def test_artifact_model_crafted_corruptions_are_refused(
        loader: ArtifactLoader, artifact_files: ArtifactFiles,
        tmp_path_factory: pytest.TempPathFactory, corrupt: Callable[[bytes], bytes]) -> None:
    manifest, model = artifact_files
    changed = corrupt(model)
    signed = dict(manifest, sha256=hashlib.sha256(changed).hexdigest())
    check_verdict(loader.load(json.dumps(signed).encode(), changed), changed,
                  tmp_path_factory.getbasetemp())
