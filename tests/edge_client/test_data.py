"""Local datasets: IDX files, .npz files and directories, and their errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.edge_client.data import load_local_dataset, read_idx, save_npz_dataset
from fedge.edge_client.errors import DataError

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def _idx_bytes(array: np.ndarray) -> bytes:
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_every_type(dtype: type, compress: bool, tmp_path: Path) -> None:
    values = np.arange(24).reshape(2, 3, 4) - (0 if dtype is np.uint8 else 7)
    array: np.ndarray = values.astype(dtype)
    raw = _idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert np.array_equal(got, array)


def test_read_idx_reads_the_real_fashion_mnist_labels() -> None:
    labels = read_idx(Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"))
    assert labels.shape == (10_000,) and labels.dtype == np.uint8 and labels.max() == 9


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not an IDX"),
        (b"\x01\x00\x08\x01", "not an IDX"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01", "not an IDX"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "header"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ],
)
def test_malformed_idx_raises_data_error(raw: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_truncated_gzip_idx_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((50, 4), np.uint8)))[:-10])
    with pytest.raises(DataError):
        read_idx(path)


def test_missing_idx_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope.idx")


def test_npz_file_and_directory_of_npz_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = [
        (rng.uniform(size=(n, 64)).astype(np.float32), rng.integers(0, 10, n)) for n in (5, 3, 4)
    ]
    for name, (x, y) in zip(("b.npz", "a.npz", "c.npz"), parts, strict=True):
        save_npz_dataset(tmp_path / "shards" / name, x, y)
    x, y = load_local_dataset(tmp_path / "shards" / "b.npz")
    assert np.array_equal(x, parts[0][0]) and np.array_equal(y, parts[0][1])
    assert x.dtype == np.float32 and y.dtype == np.int32
    x, y = load_local_dataset(tmp_path / "shards")
    assert np.array_equal(x, np.concatenate([parts[1][0], parts[0][0], parts[2][0]]))
    assert np.array_equal(y, np.concatenate([parts[1][1], parts[0][1], parts[2][1]]))
    assert not list((tmp_path / "shards").glob("*.tmp"))


def test_directory_with_an_idx_pair(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(images.astype(np.uint8)))
    )
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([1, 2, 9], np.uint8)))
    x, y = load_local_dataset(tmp_path)
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32
    assert np.allclose(x[..., 0] * 255.0, images)
    assert y.tolist() == [1, 2, 9] and y.dtype == np.int32


def test_ambiguous_idx_directory(tmp_path: Path) -> None:
    for name in ("train-images", "t10k-images", "train-labels"):
        (tmp_path / name).write_bytes(_idx_bytes(np.zeros((2, 2), np.uint8)))
    with pytest.raises(DataError, match="exactly one"):
        load_local_dataset(tmp_path)


def test_idx_pair_with_different_lengths(tmp_path: Path) -> None:
    (tmp_path / "images").write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    (tmp_path / "labels").write_bytes(_idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataError, match="3 rows but y has 2"):
        load_local_dataset(tmp_path)


def test_bad_npz_contents(tmp_path: Path) -> None:
    np.savez(tmp_path / "nox.npz", a=np.zeros(3), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_local_dataset(tmp_path / "nox.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(DataError, match="cannot read"):
        load_local_dataset(tmp_path / "obj.npz")
    np.savez(tmp_path / "fl.npz", x=np.zeros((2, 3)), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="integer labels"):
        load_local_dataset(tmp_path / "fl.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        load_local_dataset(tmp_path / "junk.npz")


def test_npz_shards_with_different_example_shapes(tmp_path: Path) -> None:
    save_npz_dataset(tmp_path / "a.npz", np.zeros((2, 4), np.float32), np.zeros(2, np.int32))
    save_npz_dataset(tmp_path / "b.npz", np.zeros((2, 5), np.float32), np.zeros(2, np.int32))
    with pytest.raises(DataError, match="disagree"):
        load_local_dataset(tmp_path)


def test_missing_paths_and_wrong_file_types(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_local_dataset(tmp_path / "nowhere")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=".npz"):
        load_local_dataset(tmp_path / "data.csv")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros(4), np.zeros(4, np.int32), "batch axis"),
        (np.zeros((4, 2)), np.zeros((4, 1), np.int32), "1-D"),
        (np.zeros((4, 2)), np.zeros(3, np.int32), "4 rows but y has 3"),
        (np.array([["a", "b"]]), np.zeros(1, np.int32), "numeric"),
        (np.zeros((1, 2)), np.array([-1]), "labels"),
    ],
)
def test_save_refuses_invalid_datasets(
    x: np.ndarray, y: np.ndarray, message: str, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=message):
        save_npz_dataset(tmp_path / "d.npz", x, y)
    assert not list(tmp_path.iterdir())


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_save_then_load_round_trips(
    x: np.ndarray, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    y = np.random.default_rng(seed).integers(0, 10, len(x)).astype(np.int64)
    path = tmp_path_factory.mktemp("rt") / "d.npz"
    save_npz_dataset(path, x, y)
    got_x, got_y = load_local_dataset(path)
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
