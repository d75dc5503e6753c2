"""A read-only view of a TFLite flatbuffer: the parts that hold variables' initial values.

Only the interpreter's flatbuffer reader is needed (no TensorFlow): `model_files` uses it to
rebuild a model's init subgraph with other weights.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from flatbuffers import number_types as fbn
from flatbuffers.table import Table

from fedge.edge_client.errors import ArtifactError

# TFLite schema v3: builtin operator codes, option-union tags, field slots used below.
CALL_ONCE, VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE = 129, 142, 143, 144
OPT_VAR_HANDLE, OPT_ASSIGN_VARIABLE = 111, 113
FLOAT32 = 0
DATA_ALIGN = 16  # the schema's force_align for Buffer.data
M_OPCODES, M_SUBGRAPHS, M_BUFFERS, M_METADATA, M_SIGNATURES = 1, 2, 4, 6, 7


def slot_offset(t: Table, slot: int) -> int:
    return int(t.Offset(4 + 2 * slot))


def scalar(t: Table, slot: int, flags: type, default: int = 0) -> int:
    off = slot_offset(t, slot)
    return default if off == 0 else int(t.Get(flags, t.Pos + off))


def vector(t: Table, slot: int) -> tuple[int, int]:
    off = slot_offset(t, slot)
    return (0, 0) if off == 0 else (int(t.Vector(off)), int(t.VectorLen(off)))


def tables(t: Table, slot: int) -> list[Table]:
    start, n = vector(t, slot)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(n)]


def ints(t: Table, slot: int) -> list[int]:
    start, n = vector(t, slot)
    return [int(t.Get(fbn.Int32Flags, start + 4 * i)) for i in range(n)]


def string(t: Table, slot: int) -> bytes:
    off = slot_offset(t, slot)
    return b"" if off == 0 else bytes(t.String(t.Pos + off))


def child(t: Table, slot: int) -> Table | None:
    off = slot_offset(t, slot)
    return None if off == 0 else Table(t.Bytes, t.Indirect(t.Pos + off))


@dataclass(frozen=True)
class Variable:
    """A resource variable as the init subgraph assigns it."""

    key: tuple[bytes, bytes]  # (container, shared_name)
    handle_name: bytes
    value_name: bytes
    value_shape: tuple[int, ...]
    value_type: int
    value_buffer: int


class ModelView:
    """Read-only view of the parts of a TFLite flatbuffer that hold variable initial values."""

    def __init__(self, data: bytes):
        self.data = data
        self.root = Table(data, int(struct.unpack_from("<I", data, 0)[0]))
        self.codes = [
            max(scalar(c, 0, fbn.Int8Flags), scalar(c, 3, fbn.Int32Flags))
            for c in tables(self.root, M_OPCODES)
        ]
        self.subgraphs = tables(self.root, M_SUBGRAPHS)

    def element(self, slot: int, index: int) -> int:
        """Absolute position of element ``index`` of the root's table vector ``slot``."""
        start, n = vector(self.root, slot)
        if not 0 <= index < n:
            raise ArtifactError(f"model.tflite vector {slot} has no element {index}")
        return start + 4 * index

    def ops(self, sg: Table) -> list[Table]:
        return tables(sg, 3)

    def code(self, op: Table) -> int:
        return self.codes[scalar(op, 0, fbn.Uint32Flags)]

    def var_key(self, op: Table) -> tuple[bytes, bytes]:
        options = child(op, 4)
        if options is None or scalar(op, 3, fbn.Uint8Flags) != OPT_VAR_HANDLE:
            raise ArtifactError("cannot bake weights: a VAR_HANDLE op has no VarHandleOptions")
        return string(options, 0), string(options, 1)

    def handles(self, sg: Table) -> dict[int, tuple[bytes, bytes]]:
        """Tensor index -> variable key, for every VAR_HANDLE output of a subgraph."""
        return {
            ints(op, 2)[0]: self.var_key(op) for op in self.ops(sg) if self.code(op) == VAR_HANDLE
        }

    def signature(self, key: str) -> tuple[int, dict[str, int]]:
        """Subgraph index and output name -> tensor index of a signature."""
        for sig in tables(self.root, M_SIGNATURES):
            if string(sig, 2).decode() == key:
                outputs = {
                    string(m, 0).decode(): scalar(m, 1, fbn.Uint32Flags) for m in tables(sig, 1)
                }
                return scalar(sig, 4, fbn.Uint32Flags), outputs
        raise ArtifactError(f"cannot bake weights: the model has no {key!r} signature")

    def init_subgraph(self) -> int:
        """Index of the subgraph every CALL_ONCE op runs (the variables' initialiser)."""
        found = set()
        for sg in self.subgraphs:
            for op in self.ops(sg):
                options = child(op, 4) if self.code(op) == CALL_ONCE else None
                if options is not None:
                    found.add(scalar(options, 0, fbn.Int32Flags))
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
        producers = {ints(op, 2)[0]: op for op in self.ops(sg) if ints(op, 2)}
        out = {}
        for name, tensor in outputs.items():
            op = producers.get(tensor)
            if op is None or self.code(op) != READ_VARIABLE or ints(op, 1)[0] not in handles:
                raise ArtifactError(
                    f"cannot bake weights: get_weights output {name!r} is not a variable read"
                )
            out[name] = handles[ints(op, 1)[0]]
        return out

    def init_vars(self, sg: Table) -> list[Variable]:
        """The variables an init subgraph assigns, in op order; refuses any other op."""
        handles = self.handles(sg)
        tensors = tables(sg, 0)
        out = []
        for op in self.ops(sg):
            code = self.code(op)
            if code == VAR_HANDLE:
                continue
            if code != ASSIGN_VARIABLE:
                raise ArtifactError(f"cannot bake weights: init subgraph runs builtin op {code}")
            handle, value = ints(op, 1)[:2]
            t = tensors[value]
            out.append(
                Variable(
                    handles[handle],
                    string(tensors[handle], 3),
                    string(t, 3),
                    tuple(ints(t, 0)),
                    scalar(t, 1, fbn.Int8Flags),
                    scalar(t, 2, fbn.Uint32Flags),
                )
            )
        return out

    def buffers_used_outside(self, skip: int) -> set[int]:
        used = {scalar(m, 1, fbn.Uint32Flags) for m in tables(self.root, M_METADATA)}
        for i, sg in enumerate(self.subgraphs):
            if i != skip:
                used.update(scalar(t, 2, fbn.Uint32Flags) for t in tables(sg, 0))
        return used | {0}
