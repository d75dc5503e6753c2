"""How an update is cut into sections (one per tensor, or one for the whole update)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from fedge.edge_client.codec.rotation import padded_length
from fedge.edge_client.codec.sparsify import keep_count
from fedge.edge_client.codec.spec import CodecSpec, Sparsifier
from fedge.edge_client.errors import CodecError

Shapes = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Section:
    """A run of the flattened update coded on its own.

    Attributes
    ----------
    offset : start in the flattened (concatenated) update.
    size : coordinates covered (the index universe).
    count : coordinates sent (``size`` when dense).
    width : values on the wire (``count``, padded when rotated).
    """

    offset: int
    size: int
    count: int
    width: int


def check_shapes(shapes: Sequence[Sequence[int]]) -> Shapes:
    """Validate tensor shapes (non-empty list, positive dims) and return them as tuples."""
    try:
        out = tuple(tuple(int(d) for d in shape) for shape in shapes)
    except (TypeError, ValueError):
        raise CodecError(f"shapes must be a sequence of integer tuples, got {shapes!r}") from None
    if not out:
        raise CodecError("an update needs at least one tensor shape")
    for i, shape in enumerate(out):
        if any(d <= 0 for d in shape):
            raise CodecError(f"tensor {i} has shape {shape}: every dimension must be >= 1")
    return out


def tensor_sizes(shapes: Shapes) -> list[int]:
    """Number of elements of each tensor."""
    return [math.prod(shape) for shape in shapes]


def dense_float32_bytes(shapes: Sequence[Sequence[int]]) -> int:
    """Bytes of the update as dense float32: the baseline for compression ratios."""
    return 4 * sum(tensor_sizes(check_shapes(shapes)))


def sections(spec: CodecSpec, shapes: Shapes) -> list[Section]:
    """Sections of an update: one per tensor, except one global section for global sparsifiers."""
    sizes = tensor_sizes(shapes)
    if spec.sparsifier is not Sparsifier.DENSE and not spec.per_tensor:
        spans = [(0, sum(sizes))]
    else:
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        spans = list(zip(offsets, sizes, strict=True))
    out = []
    for offset, size in spans:
        count = size if spec.fraction is None else keep_count(spec.fraction, size)
        width = padded_length(count) if spec.rotate else count
        out.append(Section(offset, size, count, width))
    return out


def fingerprint(spec: CodecSpec, shapes: Shapes) -> int:
    """CRC-32 of the canonical spec and shapes, carried in payloads to catch mismatches."""
    return zlib.crc32(f"{spec}|{shapes}".encode())
