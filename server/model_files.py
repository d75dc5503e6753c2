"""Downloadable model files: weights baked into model.tflite, a model zip, and .npz weights."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flatbuffers import number_types as fbn
from flatbuffers.builder import Builder
from flatbuffers.table import Table

from fedge.edge_client.artifact import MANIFEST_FILE, MODEL_FILE, Manifest
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import check_flatbuffer
from fedge.edge_client.weights import pack_weights

WEIGHTS_FILE = "weights.msgpack"
README_FILE = "README.txt"

# TFLite schema v3: builtin operator codes, option-union tags, field slots used below.
_CALL_ONCE, _VAR_HANDLE, _READ_VARIABLE, _ASSIGN_VARIABLE = 129, 142, 143, 144
_OPT_VAR_HANDLE, _OPT_ASSIGN_VARIABLE = 111, 113
_FLOAT32 = 0
_DATA_ALIGN = 16  # the schema's force_align for Buffer.data
_M_OPCODES, _M_SUBGRAPHS, _M_BUFFERS, _M_METADATA, _M_SIGNATURES = 1, 2, 4, 6, 7


def _slot(t: Table, slot: int) -> int:
    return int(t.Offset(4 + 2 * slot))


def _scalar(t: Table, slot: int, flags: type, default: int = 0) -> int:
    off = _slot(t, slot)
    return default if off == 0 else int(t.Get(flags, t.Pos + off))


def _vector(t: Table, slot: int) -> tuple[int, int]:
    off = _slot(t, slot)
    return (0, 0) if off == 0 else (int(t.Vector(off)), int(t.VectorLen(off)))


def _tables(t: Table, slot: int) -> list[Table]:
    start, n = _vector(t, slot)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(n)]


def _ints(t: Table, slot: int) -> list[int]:
    start, n = _vector(t, slot)
    return [int(t.Get(fbn.Int32Flags, start + 4 * i)) for i in range(n)]


def _string(t: Table, slot: int) -> bytes:
    off = _slot(t, slot)
    return b"" if off == 0 else bytes(t.String(t.Pos + off))


def _child(t: Table, slot: int) -> Table | None:
    off = _slot(t, slot)
    return None if off == 0 else Table(t.Bytes, t.Indirect(t.Pos + off))


@dataclass(frozen=True)
class _Var:
    """A resource variable as the init subgraph assigns it."""

    key: tuple[bytes, bytes]  # (container, shared_name)
    handle_name: bytes
    value_name: bytes
    value_shape: tuple[int, ...]
    value_type: int
    value_buffer: int


class _Model:
    """Read-only view of the parts of a TFLite flatbuffer that hold variable initial values."""

    def __init__(self, data: bytes):
        self.data = data
        self.root = Table(data, int(struct.unpack_from("<I", data, 0)[0]))
        self.codes = [
            max(_scalar(c, 0, fbn.Int8Flags), _scalar(c, 3, fbn.Int32Flags))
            for c in _tables(self.root, _M_OPCODES)
        ]
        self.subgraphs = _tables(self.root, _M_SUBGRAPHS)

    def element(self, slot: int, index: int) -> int:
        """Absolute position of element ``index`` of the root's table vector ``slot``."""
        start, n = _vector(self.root, slot)
        if not 0 <= index < n:
            raise ArtifactError(f"model.tflite vector {slot} has no element {index}")
        return start + 4 * index

    def ops(self, sg: Table) -> list[Table]:
        return _tables(sg, 3)

    def code(self, op: Table) -> int:
        return self.codes[_scalar(op, 0, fbn.Uint32Flags)]

    def var_key(self, op: Table) -> tuple[bytes, bytes]:
        options = _child(op, 4)
        if options is None or _scalar(op, 3, fbn.Uint8Flags) != _OPT_VAR_HANDLE:
            raise ArtifactError("cannot bake weights: a VAR_HANDLE op has no VarHandleOptions")
        return _string(options, 0), _string(options, 1)

    def handles(self, sg: Table) -> dict[int, tuple[bytes, bytes]]:
        """Tensor index -> variable key, for every VAR_HANDLE output of a subgraph."""
        return {
            _ints(op, 2)[0]: self.var_key(op) for op in self.ops(sg) if self.code(op) == _VAR_HANDLE
        }

    def signature(self, key: str) -> tuple[int, dict[str, int]]:
        """Subgraph index and output name -> tensor index of a signature."""
        for sig in _tables(self.root, _M_SIGNATURES):
            if _string(sig, 2).decode() == key:
                outputs = {
                    _string(m, 0).decode(): _scalar(m, 1, fbn.Uint32Flags) for m in _tables(sig, 1)
                }
                return _scalar(sig, 4, fbn.Uint32Flags), outputs
        raise ArtifactError(f"cannot bake weights: the model has no {key!r} signature")

    def init_subgraph(self) -> int:
        """Index of the subgraph every CALL_ONCE op runs (the variables' initialiser)."""
        found = set()
        for sg in self.subgraphs:
            for op in self.ops(sg):
                options = _child(op, 4) if self.code(op) == _CALL_ONCE else None
                if options is not None:
                    found.add(_scalar(options, 0, fbn.Int32Flags))
        if len(found) != 1:
            raise ArtifactError(
                f"cannot bake weights: expected one init subgraph, found {sorted(found)}"
            )
        return found.pop()

    def variable_of_weights(self) -> dict[str, tuple[bytes, bytes]]:
        """Manifest tensor name -> variable key, traced through the get_weights signature."""
        index, outputs = self.signature("get_weights")
        sg = self.subgraphs[index]
        handles = self.handles(sg)
        producers = {_ints(op, 2)[0]: op for op in self.ops(sg) if _ints(op, 2)}
        out = {}
        for name, tensor in outputs.items():
            op = producers.get(tensor)
            if op is None or self.code(op) != _READ_VARIABLE or _ints(op, 1)[0] not in handles:
                raise ArtifactError(
                    f"cannot bake weights: get_weights output {name!r} is not a variable read"
                )
            out[name] = handles[_ints(op, 1)[0]]
        return out

    def init_vars(self, sg: Table) -> list[_Var]:
        """The variables an init subgraph assigns, in op order; refuses any other op."""
        handles = self.handles(sg)
        tensors = _tables(sg, 0)
        out = []
        for op in self.ops(sg):
            code = self.code(op)
            if code == _VAR_HANDLE:
                continue
            if code != _ASSIGN_VARIABLE:
                raise ArtifactError(f"cannot bake weights: init subgraph runs builtin op {code}")
            handle, value = _ints(op, 1)[:2]
            t = tensors[value]
            out.append(
                _Var(
                    handles[handle],
                    _string(tensors[handle], 3),
                    _string(t, 3),
                    tuple(_ints(t, 0)),
                    _scalar(t, 1, fbn.Int8Flags),
                    _scalar(t, 2, fbn.Uint32Flags),
                )
            )
        return out

    def buffers_used_outside(self, skip: int) -> set[int]:
        used = {_scalar(m, 1, fbn.Uint32Flags) for m in _tables(self.root, _M_METADATA)}
        for i, sg in enumerate(self.subgraphs):
            if i != skip:
                used.update(_scalar(t, 2, fbn.Uint32Flags) for t in _tables(sg, 0))
        return used | {0}


def _int_vector(b: Builder, values: Sequence[int]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependInt32(v)
    return int(b.EndVector())


def _float_buffer(b: Builder, array: np.ndarray) -> int:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    b.StartVector(1, len(data), _DATA_ALIGN)
    b.head = b.Head() - len(data)
    b.Bytes[b.Head() : b.Head() + len(data)] = data
    vec = b.EndVector()
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(0, vec, 0)
    return int(b.EndObject())


def _tensor(b: Builder, name: bytes, shape: tuple[int, ...], ttype: int, buffer: int) -> int:
    name_off, shape_off = b.CreateString(name), _int_vector(b, shape)
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(0, shape_off, 0)
    b.PrependInt8Slot(1, ttype, 0)
    b.PrependUint32Slot(2, buffer, 0)
    b.PrependUOffsetTRelativeSlot(3, name_off, 0)
    b.PrependBoolSlot(8, True, False)  # has_rank
    return int(b.EndObject())


def _operator(
    b: Builder,
    opcode: int,
    inputs: Sequence[int],
    outputs: Sequence[int],
    options_type: int,
    options: int,
) -> int:
    ins, outs = _int_vector(b, inputs), _int_vector(b, outputs)
    b.StartObject(5)
    b.PrependUint32Slot(0, opcode, 0)
    b.PrependUOffsetTRelativeSlot(1, ins, 0)
    b.PrependUOffsetTRelativeSlot(2, outs, 0)
    b.PrependUint8Slot(3, options_type, 0)
    b.PrependUOffsetTRelativeSlot(4, options, 0)
    return int(b.EndObject())


def _table_vector(b: Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def bake_weights(model_bytes: bytes, manifest: Manifest, weights: Sequence[np.ndarray]) -> bytes:
    """Return ``model.tflite`` whose variables start at ``weights`` instead of the export's values.

    A TFLite model sets its resource variables in an init subgraph (run once by CALL_ONCE)
    from constant buffers. This appends a rebuilt init subgraph whose constants hold
    ``weights`` (manifest order, traced to variables through ``get_weights``) and points the
    model at it; every other byte is kept, so only the interpreter's flatbuffer reader is needed.

    Raises
    ------
    ArtifactError
        If the weights do not match the manifest or the model does not initialise its
        variables the way the TFLite converter does.
    """
    if len(weights) != len(manifest.tensors):
        raise ArtifactError(f"expected {len(manifest.tensors)} weight tensors, got {len(weights)}")
    for spec, w in zip(manifest.tensors, weights, strict=True):
        if tuple(np.shape(w)) != spec.shape:
            raise ArtifactError(
                f"weight {spec.name!r} has shape {np.shape(w)}, expected {spec.shape}"
            )
    check_flatbuffer(model_bytes)
    try:
        return _bake(_Model(model_bytes), manifest, weights)
    except (struct.error, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"cannot bake weights: unexpected model.tflite layout ({exc!r})"
        ) from exc


def _bake(model: _Model, manifest: Manifest, weights: Sequence[np.ndarray]) -> bytes:
    by_var = {
        model.variable_of_weights()[t.name]: np.asarray(w)
        for t, w in zip(manifest.tensors, weights, strict=True)
    }
    init = model.init_subgraph()
    old = model.subgraphs[init]
    variables = model.init_vars(old)
    missing = set(by_var) - {v.key for v in variables}
    if missing:
        raise ArtifactError(
            f"cannot bake weights: variables {sorted(missing)} have no initial value"
        )
    kept = {v.value_buffer for v in variables if v.key not in by_var}
    free = sorted(
        {_scalar(t, 2, fbn.Uint32Flags) for t in _tables(old, 0)}
        - kept
        - model.buffers_used_outside(init)
    )
    if len(free) < len(by_var):
        raise ArtifactError("cannot bake weights: the init subgraph's buffers are shared")
    opcodes = {c: i for i, c in reversed(list(enumerate(model.codes)))}

    b = Builder(1024 + sum(a.nbytes for a in by_var.values()))
    new_buffers: dict[int, int] = {}
    tensors: list[int] = []
    ops: list[int] = []
    for var in variables:
        value_buffer, shape, ttype = var.value_buffer, var.value_shape, var.value_type
        if var.key in by_var:
            value = by_var[var.key]
            if value.shape != shape or ttype != _FLOAT32:
                raise ArtifactError(
                    f"cannot bake weights: variable {var.key[1]!r} is initialised "
                    f"as type {ttype} {list(shape)}, weights are {list(value.shape)}"
                )
            value_buffer = free.pop(0)
            new_buffers[value_buffer] = _float_buffer(b, value)
        handle_index, value_index = len(tensors), len(tensors) + 1
        tensors.append(_tensor(b, var.handle_name, (), 13, 0))  # 13 = RESOURCE
        tensors.append(_tensor(b, var.value_name, shape, ttype, value_buffer))
        container, shared = b.CreateString(var.key[0]), b.CreateString(var.key[1])
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, container, 0)
        b.PrependUOffsetTRelativeSlot(1, shared, 0)
        handle_options = b.EndObject()
        ops.append(
            _operator(b, opcodes[_VAR_HANDLE], [], [handle_index], _OPT_VAR_HANDLE, handle_options)
        )
        b.StartObject(0)
        ops.append(
            _operator(
                b,
                opcodes[_ASSIGN_VARIABLE],
                [handle_index, value_index],
                [],
                _OPT_ASSIGN_VARIABLE,
                b.EndObject(),
            )
        )
    tensors_vec, ops_vec = _table_vector(b, tensors), _table_vector(b, ops)
    empty_in, empty_out = _int_vector(b, []), _int_vector(b, [])
    name = b.CreateString(_string(old, 4))
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, empty_in, 0)
    b.PrependUOffsetTRelativeSlot(2, empty_out, 0)
    b.PrependUOffsetTRelativeSlot(3, ops_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, name, 0)
    subgraph = b.EndObject()
    b.Finish(subgraph)
    blob = bytes(b.Output())

    # Flatbuffer offsets point forward only: the appended objects follow everything that
    # now points at them (one element of Model.subgraphs and of Model.buffers each).
    start = -(-len(model.data) // _DATA_ALIGN) * _DATA_ALIGN
    out = bytearray(model.data) + bytes(start - len(model.data)) + blob

    def point(element: int, builder_offset: int) -> None:
        struct.pack_into("<I", out, element, start + len(blob) - builder_offset - element)

    point(model.element(_M_SUBGRAPHS, init), subgraph)
    for index, table in new_buffers.items():
        point(model.element(_M_BUFFERS, index), table)
    return bytes(out)


def baked_manifest(manifest: Manifest, model_bytes: bytes) -> Manifest:
    """The manifest describing a baked ``model.tflite`` (same tensors, new sha256)."""
    return dataclasses.replace(manifest, sha256=hashlib.sha256(model_bytes).hexdigest())


def weights_npz(manifest: Manifest, weights: Sequence[np.ndarray]) -> bytes:
    """Weights as an ``.npz`` keyed by the manifest's tensor names."""
    buf = io.BytesIO()
    np.savez(
        buf,
        **{
            t.name: np.asarray(w, np.float32)
            for t, w in zip(manifest.tensors, weights, strict=True)
        },
    )
    return buf.getvalue()


def model_zip(
    manifest: Manifest, model_bytes: bytes, weights: Sequence[np.ndarray], description: str
) -> bytes:
    """A zip that is itself a fedge artifact directory whose initial weights are ``weights``.

    Holds ``model.tflite`` (weights baked in), ``manifest.json`` (its sha256 updated),
    ``weights.msgpack`` (for ``set_weights`` in any fedge runtime) and a README line.
    """
    baked = bake_weights(model_bytes, manifest, weights)
    files = {
        MODEL_FILE: baked,
        MANIFEST_FILE: baked_manifest(manifest, baked).to_json(),
        WEIGHTS_FILE: pack_weights(weights),
        README_FILE: (
            f"{description}. {MODEL_FILE} starts with these weights (load it with any "
            f"TFLite interpreter, signatures infer/evaluate/train); {WEIGHTS_FILE} holds "
            f"the same tensors for set_weights; {MANIFEST_FILE} describes both.\n"
        ).encode(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
