"""A bounds check of TFLite flatbuffers before any interpreter reads them.

The interpreter trusts offsets inside the flatbuffer: a truncated or corrupt file can crash
the process instead of raising. `check_flatbuffer` walks every table, vector and string the
interpreter reads (TFLite schema v3) and checks it lies inside the buffer, plus the
cross-references between tables (buffer, opcode, tensor and subgraph indices).
"""

from __future__ import annotations

import struct

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ArtifactError

_MAX_VECTOR = 1 << 28


class _Reader:
    """Bounds-checked reads of flatbuffer tables, vectors and strings."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.size = len(buf)

    def fail(self, what: str) -> ArtifactError:
        return ArtifactError(f"model.tflite is truncated or corrupt: {what}")

    def _need(self, pos: int, length: int, what: str) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise self.fail(
                f"{what} at byte {pos} (+{length}) is outside the {self.size}-byte file"
            )

    def u32(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return int(struct.unpack_from("<I", self.buf, pos)[0])

    def table(self, pos: int, what: str) -> tuple[int, int, int]:
        """Return (table position, vtable position, vtable size) after checking both."""
        self._need(pos, 4, what)
        vtable = pos - int(struct.unpack_from("<i", self.buf, pos)[0])
        self._need(vtable, 4, f"{what} vtable")
        vt_size, table_size = struct.unpack_from("<HH", self.buf, vtable)
        if vt_size < 4 or vt_size % 2:
            raise self.fail(f"{what} has a bad vtable size {vt_size}")
        self._need(vtable, vt_size, f"{what} vtable")
        self._need(pos, table_size, what)
        return pos, vtable, vt_size

    def field(self, tbl: tuple[int, int, int], slot: int, width: int) -> int | None:
        """Position of field ``slot`` (None if absent), checked to hold ``width`` bytes."""
        pos, vtable, vt_size = tbl
        entry = 4 + 2 * slot
        if entry >= vt_size:
            return None
        off = int(struct.unpack_from("<H", self.buf, vtable + entry)[0])
        if off == 0:
            return None
        self._need(pos + off, width, f"field {slot}")
        return pos + off

    def scalar(self, tbl: tuple[int, int, int], slot: int, fmt: str, default: int = 0) -> int:
        at = self.field(tbl, slot, struct.calcsize(fmt))
        return default if at is None else int(struct.unpack_from("<" + fmt, self.buf, at)[0])

    def child(self, tbl: tuple[int, int, int], slot: int, what: str) -> int | None:
        """Absolute position an offset field points to (None if absent)."""
        at = self.field(tbl, slot, 4)
        return None if at is None else at + self.u32(at, what)

    def vector(self, tbl: tuple[int, int, int], slot: int, elem: int, what: str) -> tuple[int, int]:
        """(start of elements, length) of a vector field; (0, 0) if absent."""
        at = self.child(tbl, slot, what)
        if at is None:
            return 0, 0
        length = self.u32(at, f"{what} length")
        if length > _MAX_VECTOR:
            raise self.fail(f"{what} claims {length} elements")
        self._need(at + 4, length * elem, what)
        return at + 4, length

    def ints(self, tbl: tuple[int, int, int], slot: int, what: str) -> Array:
        start, length = self.vector(tbl, slot, 4, what)
        return np.frombuffer(self.buf, "<i4", length, start) if length else np.zeros(0, "<i4")

    def tables(self, tbl: tuple[int, int, int], slot: int, what: str) -> list[tuple[int, int, int]]:
        start, length = self.vector(tbl, slot, 4, what)
        out = []
        for i in range(length):
            item = start + 4 * i
            out.append(self.table(item + self.u32(item, what), f"{what}[{i}]"))
        return out

    def string(self, tbl: tuple[int, int, int], slot: int, what: str) -> str:
        start, length = self.vector(tbl, slot, 1, what)
        self._need(start, length + 1, what)  # strings are NUL-terminated
        try:
            return self.buf[start : start + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8") from exc

    def union(self, tbl: tuple[int, int, int], slot: int, what: str) -> None:
        at = self.child(tbl, slot, what)
        if at is not None:
            self.table(at, what)


_VAR_HANDLE_OPTIONS = 111  # BuiltinOptions.VarHandleOptions in the TFLite schema


def check_flatbuffer(model_bytes: bytes) -> None:
    """Check that a TFLite flatbuffer is structurally sound before the interpreter reads it.

    Raises
    ------
    ArtifactError
        Naming what is out of bounds or inconsistent (truncated or corrupt file).
    """
    r = _Reader(model_bytes)
    if r.size < 8 or model_bytes[4:8] != b"TFL3":
        raise r.fail(f"no TFL3 identifier in the first 8 bytes ({r.size} bytes in file)")
    model = r.table(r.u32(0, "root offset"), "model")
    if r.scalar(model, 0, "I") != 3:
        raise r.fail(f"schema version {r.scalar(model, 0, 'I')}, expected 3")
    opcodes = r.tables(model, 1, "operator_codes")
    custom = [r.string(code, 1, f"operator_codes[{i}]") for i, code in enumerate(opcodes)]
    flex = sorted(c for c in custom if c.startswith("Flex"))
    if flex:
        raise ArtifactError(
            f"Flex ops present in the model: {flex}; devices run TFLite builtin ops only"
        )
    buffers = r.tables(model, 4, "buffers")
    for i, buf in enumerate(buffers):
        r.vector(buf, 0, 1, f"buffers[{i}].data")
        offset, size = r.scalar(buf, 1, "Q"), r.scalar(buf, 2, "Q")
        if offset > 1 and offset + size > r.size:
            raise r.fail(f"buffers[{i}] points past the end of the file")
    subgraphs = r.tables(model, 2, "subgraphs")
    if not subgraphs:
        raise r.fail("the model has no subgraphs")
    tensor_counts = [
        _check_subgraph(r, sg, i, len(buffers), len(opcodes)) for i, sg in enumerate(subgraphs)
    ]
    r.vector(model, 5, 4, "metadata_buffer")
    for i, meta in enumerate(r.tables(model, 6, "metadata")):
        r.string(meta, 0, f"metadata[{i}].name")
        if r.scalar(meta, 1, "I") >= len(buffers):
            raise r.fail(f"metadata[{i}] refers to a missing buffer")
    for i, sig in enumerate(r.tables(model, 7, "signature_defs")):
        index = r.scalar(sig, 4, "I")
        if index >= len(subgraphs):
            raise r.fail(f"signature_defs[{i}] refers to missing subgraph {index}")
        r.string(sig, 2, f"signature_defs[{i}].signature_key")
        for slot in (0, 1):
            for j, tmap in enumerate(r.tables(sig, slot, f"signature_defs[{i}] tensors")):
                r.string(tmap, 0, f"signature_defs[{i}] tensor {j} name")
                if r.scalar(tmap, 1, "I") >= tensor_counts[index]:
                    raise r.fail(f"signature_defs[{i}] tensor {j} index out of range")


def _check_subgraph(
    r: _Reader, sg: tuple[int, int, int], i: int, n_buffers: int, n_opcodes: int
) -> int:
    tensors = r.tables(sg, 0, f"subgraphs[{i}].tensors")
    for j, t in enumerate(tensors):
        what = f"subgraphs[{i}].tensors[{j}]"
        r.ints(t, 0, f"{what}.shape")
        r.ints(t, 7, f"{what}.shape_signature")
        r.string(t, 3, f"{what}.name")
        if r.scalar(t, 2, "I") >= n_buffers:
            raise r.fail(f"{what} refers to a missing buffer")
        quant = r.child(t, 4, f"{what}.quantization")
        if quant is not None:
            q = r.table(quant, f"{what}.quantization")
            for slot, elem in ((0, 4), (1, 4), (2, 4), (3, 8)):
                r.vector(q, slot, elem, f"{what}.quantization")
            r.union(q, 5, f"{what}.quantization.details")
        r.union(t, 6, f"{what}.sparsity")
    n = len(tensors)
    for slot in (1, 2):
        _check_indices(r, r.ints(sg, slot, f"subgraphs[{i}] io"), n, f"subgraphs[{i}] io")
    for j, op in enumerate(r.tables(sg, 3, f"subgraphs[{i}].operators")):
        what = f"subgraphs[{i}].operators[{j}]"
        if r.scalar(op, 0, "I") >= n_opcodes:
            raise r.fail(f"{what} uses a missing opcode")
        for slot in (1, 2, 8):
            _check_indices(r, r.ints(op, slot, what), n, what)
        r.union(op, 4, f"{what}.builtin_options")
        if r.scalar(op, 3, "B") == _VAR_HANDLE_OPTIONS:  # strings the interpreter reads unchecked
            at = r.child(op, 4, f"{what}.builtin_options")
            if at is not None:
                options = r.table(at, f"{what}.builtin_options")
                r.string(options, 0, f"{what} VarHandleOptions.container")
                r.string(options, 1, f"{what} VarHandleOptions.shared_name")
        r.vector(op, 5, 1, f"{what}.custom_options")
        r.vector(op, 7, 1, f"{what}.mutating_variable_inputs")
    return n


def _check_indices(r: _Reader, indices: Array, n: int, what: str) -> None:
    if indices.size and (indices.min() < -1 or indices.max() >= n):
        raise r.fail(f"{what} refers to tensors outside 0..{n - 1}")
