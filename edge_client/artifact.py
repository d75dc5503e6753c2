"""Model artifact contract: manifest.json + model.tflite, validated before any training."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import Signature, make_interpreter

FORMAT_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
SUPPORTED_DTYPES = ("float32",)
SIGNATURES = ("train", "evaluate", "infer", "get_weights", "set_weights")
# set_weights must return something or the converter prunes its assignments.
SET_WEIGHTS_OUTPUT = "count"

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _int(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(f"manifest field {field!r} must be an int, got {value!r}")
    if value < minimum:
        raise ArtifactError(f"manifest field {field!r} must be >= {minimum}, got {value}")
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ArtifactError(f"manifest field {field!r} must be a non-empty string, got {value!r}")
    return value


def _shape(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ArtifactError(f"manifest field {field!r} must be a non-empty list, got {value!r}")
    return tuple(_int(v, field, 1) for v in value)


def _dtype(value: Any, field: str) -> str:
    if value not in SUPPORTED_DTYPES:
        raise ArtifactError(
            f"manifest field {field!r} must be one of {SUPPORTED_DTYPES}, got {value!r}"
        )
    return str(value)


@dataclass(frozen=True)
class TensorSpec:
    """One trainable tensor: signature name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @classmethod
    def from_dict(cls, data: Any, where: str = "tensors[]") -> TensorSpec:
        """Parse ``{name, shape, dtype}``; ArtifactError naming the bad field."""
        if not isinstance(data, Mapping) or set(data) != {"name", "shape", "dtype"}:
            raise ArtifactError(
                f"manifest field {where!r} must be an object with name, shape, dtype"
            )
        name = _str(data["name"], f"{where}.name")
        if not _IDENT_RE.match(name):
            raise ArtifactError(f"manifest field {where}.name {name!r} is not an identifier")
        return cls(
            name, _shape(data["shape"], f"{where}.shape"), _dtype(data["dtype"], f"{where}.dtype")
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about ``model.tflite`` (see docs/artifact.md)."""

    model: str
    input_shape: tuple[int, ...]
    input_dtype: str
    num_classes: int
    batch_size: int
    tensors: tuple[TensorSpec, ...]
    param_count: int
    frozen_param_count: int
    sha256: str
    ops: tuple[str, ...]
    exporter_version: str
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate every field's type and consistency.

        Raises
        ------
        ArtifactError
            Naming the first missing, unknown or invalid field.
        """
        if not isinstance(data, Mapping):
            raise ArtifactError("manifest must be a JSON object")
        expected = set(cls.__dataclass_fields__)
        missing, unknown = expected - set(data), set(data) - expected
        if missing:
            raise ArtifactError(f"manifest is missing fields {sorted(missing)}")
        if unknown:
            raise ArtifactError(f"manifest has unknown fields {sorted(unknown)}")
        version = _int(data["format_version"], "format_version", 1)
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"manifest field 'format_version' is {version}, this client reads {FORMAT_VERSION}"
            )
        raw_tensors = data["tensors"]
        if not isinstance(raw_tensors, list) or not raw_tensors:
            raise ArtifactError("manifest field 'tensors' must be a non-empty list")
        tensors = tuple(TensorSpec.from_dict(t, f"tensors[{i}]") for i, t in enumerate(raw_tensors))
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ArtifactError(f"manifest field 'tensors' has duplicate names: {names}")
        param_count = _int(data["param_count"], "param_count", 1)
        if param_count != sum(t.size for t in tensors):
            raise ArtifactError(
                f"manifest field 'param_count' is {param_count} but the tensors hold "
                f"{sum(t.size for t in tensors)} values"
            )
        sha = _str(data["sha256"], "sha256")
        if not _SHA_RE.match(sha):
            raise ArtifactError(
                f"manifest field 'sha256' must be 64 lowercase hex digits, got {sha!r}"
            )
        ops = data["ops"]
        if not isinstance(ops, list) or not all(isinstance(o, str) and o for o in ops):
            raise ArtifactError("manifest field 'ops' must be a list of op names")
        return cls(
            model=_str(data["model"], "model"),
            input_shape=_shape(data["input_shape"], "input_shape"),
            input_dtype=_dtype(data["input_dtype"], "input_dtype"),
            num_classes=_int(data["num_classes"], "num_classes", 2),
            batch_size=_int(data["batch_size"], "batch_size", 1),
            tensors=tensors,
            param_count=param_count,
            frozen_param_count=_int(data["frozen_param_count"], "frozen_param_count", 0),
            sha256=sha,
            ops=tuple(ops),
            exporter_version=_str(data["exporter_version"], "exporter_version"),
            format_version=version,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the inverse of :meth:`from_dict`)."""
        return {
            "format_version": self.format_version,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "num_classes": self.num_classes,
            "batch_size": self.batch_size,
            "tensors": [t.to_dict() for t in self.tensors],
            "param_count": self.param_count,
            "frozen_param_count": self.frozen_param_count,
            "sha256": self.sha256,
            "ops": list(self.ops),
            "exporter_version": self.exporter_version,
        }

    def to_json(self) -> bytes:
        """``manifest.json`` bytes."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()

    def flex_ops(self) -> list[str]:
        """Select-TF (Flex) ops the manifest lists; a device cannot run any of them."""
        return [op for op in self.ops if op.startswith("Flex")]


@dataclass(frozen=True)
class LoadedModel:
    """An interpreter with the five contract signatures allocated and checked."""

    interpreter: Any
    train: Signature
    evaluate: Signature
    infer: Signature
    get_weights: Signature
    set_weights: Signature


@dataclass(frozen=True)
class Artifact:
    """A validated manifest and the model bytes it describes."""

    manifest: Manifest
    model_bytes: bytes

    @classmethod
    def from_bytes(cls, manifest_json: bytes, model_bytes: bytes) -> Artifact:
        """Parse and fully validate an artifact held in memory.

        Checks, in order: manifest JSON and fields, sha256 of the model, Flex ops in
        the manifest, flatbuffer structure, then the signatures in the interpreter
        (names, input shape, tensors returned by ``get_weights``).

        Raises
        ------
        ArtifactError
            Naming the first problem found.
        """
        if len(manifest_json) > MAX_MANIFEST_BYTES:
            raise ArtifactError(
                f"manifest is {len(manifest_json)} bytes, over {MAX_MANIFEST_BYTES}"
            )
        try:
            data = json.loads(manifest_json)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ArtifactError(
                f"manifest is not valid JSON (truncated or corrupt?): {exc}"
            ) from exc
        manifest = Manifest.from_dict(data)
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest != manifest.sha256:
            raise ArtifactError(
                f"sha256 mismatch: manifest says {manifest.sha256}, model is {digest} "
                f"({len(model_bytes)} bytes; truncated or corrupt download?)"
            )
        flex = manifest.flex_ops()
        if flex:
            raise ArtifactError(
                f"Flex ops present in the model: {flex}; export with builtin ops only"
            )
        artifact = cls(manifest, model_bytes)
        artifact.load(num_threads=1)
        return artifact

    def load(self, num_threads: int = 1, *, xnnpack: bool = True) -> LoadedModel:
        """Make an interpreter and check every signature against the manifest.

        ``xnnpack`` applies the interpreter's default XNNPACK delegate (see
        :func:`edge_client.runtime.make_interpreter`).

        Raises
        ------
        ArtifactError
            Missing signature, Flex ops, wrong input shape, or tensors that differ
            from the manifest.
        """
        interpreter = make_interpreter(self.model_bytes, num_threads, xnnpack=xnnpack)
        sigs = {key: Signature(interpreter, key) for key in SIGNATURES}
        _check_signatures(self.manifest, sigs)
        return LoadedModel(interpreter, **sigs)


def _expect(sig: Signature, io: str, name: str, shape: tuple[int, ...], dtype: str) -> None:
    infos = sig.inputs if io == "input" else sig.outputs
    if name not in infos:
        raise ArtifactError(f"signature {sig.key!r} has no {io} {name!r} (has {sorted(infos)})")
    info = infos[name]
    if info.shape != shape or info.dtype != np.dtype(dtype):
        raise ArtifactError(
            f"signature {sig.key!r} {io} {name!r} is {info.dtype}{list(info.shape)}, "
            f"the manifest implies {dtype}{list(shape)}"
        )


def _check_signatures(m: Manifest, sigs: Mapping[str, Signature]) -> None:
    b = m.batch_size
    x_shape = (b, *m.input_shape)
    x_info = sigs["train"].inputs.get("x")
    if x_info is not None and x_info.shape != x_shape:
        raise ArtifactError(
            f"wrong input shape: the model takes x {list(x_info.shape)}, the manifest says "
            f"batch {b} x input_shape {list(m.input_shape)}"
        )
    batch_io = {
        "x": (x_shape, m.input_dtype),
        "y": ((b,), "int32"),
        "mask": ((b,), "float32"),
        "lr": ((), "float32"),
    }
    for key, names in (
        ("train", ("x", "y", "mask", "lr")),
        ("evaluate", ("x", "y", "mask")),
        ("infer", ("x",)),
    ):
        if set(sigs[key].inputs) != set(names):
            raise ArtifactError(
                f"signature {key!r} takes inputs {sorted(sigs[key].inputs)}, "
                f"the contract is {sorted(names)}"
            )
        for name in names:
            _expect(sigs[key], "input", name, *batch_io[name])
    _expect(sigs["train"], "output", "loss", (), "float32")
    _expect(sigs["evaluate"], "output", "loss", (), "float32")
    _expect(sigs["evaluate"], "output", "correct", (), "float32")
    _expect(sigs["infer"], "output", "logits", (b, m.num_classes), "float32")
    wanted = {t.name for t in m.tensors}
    for key, io in (("get_weights", "output"), ("set_weights", "input")):
        sig = sigs[key]
        have = set(sig.outputs if io == "output" else sig.inputs)
        if have != wanted:
            raise ArtifactError(
                f"manifest/tensor mismatch: {key} {io}s are {sorted(have)}, "
                f"the manifest lists {sorted(wanted)}"
            )
        for t in m.tensors:
            try:
                _expect(sig, io, t.name, t.shape, t.dtype)
            except ArtifactError as exc:
                raise ArtifactError(f"manifest/tensor mismatch: {exc}") from exc
    _expect(sigs["set_weights"], "output", SET_WEIGHTS_OUTPUT, (), "int32")


def load_artifact(directory: Path) -> Artifact:
    """Read ``directory/manifest.json`` and ``directory/model.tflite`` and validate them.

    Raises
    ------
    ArtifactError
        If a file is missing or unreadable, or any check of :meth:`Artifact.from_bytes` fails.
    """
    directory = Path(directory)
    contents = []
    for name in (MANIFEST_FILE, MODEL_FILE):
        path = directory / name
        try:
            contents.append(path.read_bytes())
        except OSError as exc:
            raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return Artifact.from_bytes(contents[0], contents[1])
