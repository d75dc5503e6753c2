"""Downloadable model files: weights baked into model.tflite, a model zip, and .npz weights."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import zipfile
from collections.abc import Sequence

import numpy as np
from flatbuffers import number_types as fbn
from flatbuffers.builder import Builder

from fedge.edge_client.arrays import Array
from fedge.edge_client.artifact import MANIFEST_FILE, MODEL_FILE, Manifest
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.flatbuffer_check import check_flatbuffer
from fedge.edge_client.weights import pack_weights
from fedge.server.tflite_model import (
    ASSIGN_VARIABLE,
    DATA_ALIGN,
    FLOAT32,
    M_BUFFERS,
    M_SUBGRAPHS,
    OPT_ASSIGN_VARIABLE,
    OPT_VAR_HANDLE,
    VAR_HANDLE,
    ModelView,
    Variable,
    scalar,
    string,
    tables,
)

WEIGHTS_FILE = "weights.msgpack"
README_FILE = "README.txt"


def _int_vector(b: Builder, values: Sequence[int]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependInt32(v)
    return int(b.EndVector())


def _float_buffer(b: Builder, array: Array) -> int:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    b.StartVector(1, len(data), DATA_ALIGN)
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


def bake_weights(model_bytes: bytes, manifest: Manifest, weights: Sequence[Array]) -> bytes:
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
        return _bake(ModelView(model_bytes), manifest, weights)
    except (struct.error, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"cannot bake weights: unexpected model.tflite layout ({exc!r})"
        ) from exc


def _bake(model: ModelView, manifest: Manifest, weights: Sequence[Array]) -> bytes:
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
        {scalar(t, 2, fbn.Uint32Flags) for t in tables(old, 0)}
        - kept
        - model.buffers_used_outside(init)
    )
    if len(free) < len(by_var):
        raise ArtifactError("cannot bake weights: the init subgraph's buffers are shared")
    b = Builder(1024 + sum(a.nbytes for a in by_var.values()))
    subgraph, new_buffers = _init_subgraph(b, model, variables, by_var, free, string(old, 4))
    b.Finish(subgraph)
    return _append(model, init, bytes(b.Output()), subgraph, new_buffers)


def _init_subgraph(
    b: Builder,
    model: ModelView,
    variables: list[Variable],
    by_var: dict[tuple[bytes, bytes], Array],
    free: list[int],
    name: bytes,
) -> tuple[int, dict[int, int]]:
    """An init subgraph assigning ``by_var``'s values (other variables as before).

    Returns the subgraph's builder offset and buffer index -> builder offset of new buffers.
    """
    opcodes = {c: i for i, c in reversed(list(enumerate(model.codes)))}
    new_buffers: dict[int, int] = {}
    tensors: list[int] = []
    ops: list[int] = []
    for var in variables:
        value_buffer, shape, ttype = var.value_buffer, var.value_shape, var.value_type
        if var.key in by_var:
            value = by_var[var.key]
            if value.shape != shape or ttype != FLOAT32:
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
            _operator(b, opcodes[VAR_HANDLE], [], [handle_index], OPT_VAR_HANDLE, handle_options)
        )
        b.StartObject(0)
        assign = opcodes[ASSIGN_VARIABLE]
        ops.append(
            _operator(
                b, assign, [handle_index, value_index], [], OPT_ASSIGN_VARIABLE, b.EndObject()
            )
        )
    tensors_vec, ops_vec = _table_vector(b, tensors), _table_vector(b, ops)
    empty_in, empty_out = _int_vector(b, []), _int_vector(b, [])
    name_offset = b.CreateString(name)
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, empty_in, 0)
    b.PrependUOffsetTRelativeSlot(2, empty_out, 0)
    b.PrependUOffsetTRelativeSlot(3, ops_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, name_offset, 0)
    return b.EndObject(), new_buffers


def _append(
    model: ModelView, init: int, blob: bytes, subgraph: int, new_buffers: dict[int, int]
) -> bytes:
    """The model with ``blob`` appended and its init subgraph and new buffers pointing into it.

    Flatbuffer offsets point forward only: the appended objects follow everything that now
    points at them (one element of Model.subgraphs and of Model.buffers each).
    """
    start = -(-len(model.data) // DATA_ALIGN) * DATA_ALIGN
    out = bytearray(model.data) + bytes(start - len(model.data)) + blob

    def point(element: int, builder_offset: int) -> None:
        struct.pack_into("<I", out, element, start + len(blob) - builder_offset - element)

    point(model.element(M_SUBGRAPHS, init), subgraph)
    for index, table in new_buffers.items():
        point(model.element(M_BUFFERS, index), table)
    return bytes(out)


def baked_manifest(manifest: Manifest, model_bytes: bytes) -> Manifest:
    """The manifest describing a baked ``model.tflite`` (same tensors, new sha256)."""
    return dataclasses.replace(manifest, sha256=hashlib.sha256(model_bytes).hexdigest())


def weights_npz(manifest: Manifest, weights: Sequence[Array]) -> bytes:
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
    manifest: Manifest, model_bytes: bytes, weights: Sequence[Array], description: str
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
