"""Error-feedback residual: what the device has not sent yet, kept across rounds and restarts."""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import msgpack
import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.layout import check_shapes, tensor_sizes

log = logging.getLogger(__name__)

FILE_VERSION = 1
_FILE_OVERHEAD = 4096


class ResidualStatus(Enum):
    """Outcome of the last :meth:`ErrorFeedback.load`."""

    EMPTY = "empty"  # no file (first round or in-memory only): residual is zero
    LOADED = "loaded"
    CORRUPT = "corrupt"  # unreadable file: reported and reset to zero
    SHAPE_MISMATCH = "shape_mismatch"  # saved for other shapes: reset to zero


class ErrorFeedback:
    """Residual store: ``residual = corrected - decoded`` after each encode.

    Parameters
    ----------
    shapes : tensor shapes of the update.
    path : file the residual persists in (atomic writes), or None to keep it in memory.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], path: Path | None) -> None:
        self.shapes = check_shapes(shapes)
        self.path = path
        self._size = sum(tensor_sizes(self.shapes))
        self.flat = np.zeros(self._size, dtype=np.float32)
        self.status = self.load()

    @property
    def residual(self) -> list[Array]:
        """The residual as one float32 array per tensor."""
        out, start = [], 0
        for shape, size in zip(self.shapes, tensor_sizes(self.shapes), strict=True):
            out.append(self.flat[start : start + size].reshape(shape).copy())
            start += size
        return out

    def correct(self, flat_delta: Array) -> Array:
        """Delta plus the residual (float64), the vector the codec should send."""
        return flat_delta + self.flat

    def update(self, corrected: Array, decoded: Array) -> None:
        """Keep ``corrected - decoded`` as the new residual and persist it."""
        self.flat = (corrected - decoded).astype(np.float32)
        self.save()

    def _reset(self, status: ResidualStatus, reason: str) -> ResidualStatus:
        log.warning("error-feedback residual %s %s; starting from zero", self.path, reason)
        self.flat = np.zeros(self._size, dtype=np.float32)
        return status

    def load(self) -> ResidualStatus:
        """Read the residual file; a missing file gives zero, a bad one is reported and reset."""
        self.flat = np.zeros(self._size, dtype=np.float32)
        if self.path is None or not self.path.exists():
            return ResidualStatus.EMPTY
        try:
            with self.path.open("rb") as f:
                raw = f.read(4 * self._size + _FILE_OVERHEAD + 1)
            version, shapes, crc, data = msgpack.unpackb(raw, raw=False)
            shapes_t = tuple(tuple(int(d) for d in shape) for shape in shapes)
        except Exception as exc:  # any unreadable content is treated the same way
            return self._reset(ResidualStatus.CORRUPT, f"is unreadable ({exc})")
        if version != FILE_VERSION or not isinstance(data, bytes) or zlib.crc32(data) != crc:
            return self._reset(ResidualStatus.CORRUPT, "failed its version or checksum check")
        if shapes_t != self.shapes or len(data) != 4 * self._size:
            return self._reset(ResidualStatus.SHAPE_MISMATCH, f"was saved for shapes {shapes_t}")
        flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(flat)):
            return self._reset(ResidualStatus.CORRUPT, "holds NaN or infinity")
        self.flat = flat
        return ResidualStatus.LOADED

    def save(self) -> None:
        """Write the residual atomically (temporary file in the same directory + os.replace)."""
        if self.path is None:
            return
        data = self.flat.astype("<f4").tobytes()
        blob = msgpack.packb(
            [FILE_VERSION, [list(s) for s in self.shapes], zlib.crc32(data), data],
            use_bin_type=True,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
