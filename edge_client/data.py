"""Local training data on the device: IDX files and .npz datasets."""

from __future__ import annotations

import gzip
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import DataError

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> Array:
    """Read an IDX file (plain or gzip-compressed, detected by content).

    Raises
    ------
    DataError
        If the file is missing, not IDX, or its size disagrees with its header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except OSError as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    except EOFError as exc:
        raise DataError(f"IDX file {path} is a truncated gzip stream") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"IDX file {path} has a truncated header ({ndim} dims)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path} holds {len(raw)} bytes, its header {list(shape)} implies {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _check_pair(x: Array, y: Array, where: str) -> None:
    if x.ndim < 2:
        raise DataError(f"{where}: x must have a batch axis and a feature shape, got {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{where}: y must be 1-D labels, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} rows but y has {len(y)}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{where}: x must be numeric, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: y must hold integer labels, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() > np.iinfo(np.int32).max):
        raise DataError(f"{where}: labels must be in [0, 2^31), got {y.min()}..{y.max()}")


def _as_dataset(x: Array, y: Array, where: str) -> tuple[Array, Array]:
    _check_pair(x, y, where)
    return x.astype(np.float32, copy=False), y.astype(np.int32, copy=False)


def _load_npz(path: Path) -> tuple[Array, Array]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files or "y" not in npz.files:
                raise DataError(f"{path}: needs arrays 'x' and 'y', has {sorted(npz.files)}")
            return _as_dataset(npz["x"], npz["y"], str(path))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from exc


def _load_idx_dir(directory: Path) -> tuple[Array, Array]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    images = [p for p in files if "images" in p.name]
    labels = [p for p in files if "labels" in p.name]
    if len(images) != 1 or len(labels) != 1:
        raise DataError(
            f"{directory}: need exactly one *images* and one *labels* IDX file, found "
            f"{[p.name for p in images]} and {[p.name for p in labels]}"
        )
    x, y = read_idx(images[0]), read_idx(labels[0])
    if x.dtype == np.uint8:  # raw pixels: scale to [0, 1] and add a channel axis
        x = (x.astype(np.float32) / 255.0)[..., None]
    return _as_dataset(x, y, str(directory))


def load_local_dataset(path: Path) -> tuple[Array, Array]:
    """Load ``(x float32, y int32)`` from a .npz file or a directory.

    A directory holds either ``.npz`` files (concatenated in sorted name order) or one
    IDX images/labels pair (uint8 images are scaled to [0, 1] with a channel axis added).

    Raises
    ------
    DataError
        If the path is missing or anything in it is malformed.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{path}: expected a .npz file or a directory")
        return _load_npz(path)
    if not path.is_dir():
        raise DataError(f"dataset path {path} does not exist")
    parts = sorted(path.glob("*.npz"))
    if not parts:
        return _load_idx_dir(path)
    loaded = [_load_npz(p) for p in parts]
    shapes = {x.shape[1:] for x, _ in loaded}
    if len(shapes) != 1:
        raise DataError(f"{path}: .npz files disagree on the example shape: {sorted(shapes)}")
    return np.concatenate([x for x, _ in loaded]), np.concatenate([y for _, y in loaded])


def save_npz_dataset(path: Path, x: Array, y: Array) -> None:
    """Write ``x``/``y`` to an uncompressed .npz file atomically.

    Raises
    ------
    DataError
        If the arrays do not form a valid dataset.
    """
    path = Path(path)
    x, y = np.asarray(x), np.asarray(y)
    _check_pair(x, y, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x=x, y=y)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
