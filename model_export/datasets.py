"""Offline data sets for exporting, pretraining and testing: sklearn digits, Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.edge_client.data import read_idx
from fedge.edge_client.errors import DataError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "x_tr": "train-images-idx3-ubyte.gz",
    "y_tr": "train-labels-idx1-ubyte.gz",
    "x_te": "t10k-images-idx3-ubyte.gz",
    "y_te": "t10k-labels-idx1-ubyte.gz",
}

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_digits_arrays(test_fraction: float = 0.25, seed: int = 0) -> Arrays:
    """sklearn's 8x8 digits as ``(x_tr, y_tr, x_te, y_te)``, stratified and seeded.

    ``x`` is float32 ``[N, 64]`` in [0, 1]; ``y`` is int32.

    Raises
    ------
    DataError
        If ``test_fraction`` is not in (0, 1).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def load_fashion_mnist(root: Path = FASHION_MNIST_ROOT) -> Arrays:
    """Fashion-MNIST as ``(x_tr, y_tr, x_te, y_te)``: x float32 ``[N, 28, 28, 1]`` in [0, 1].

    Raises
    ------
    DataError
        If a file is missing (install with ``apt-get install dataset-fashion-mnist``)
        or malformed.
    """
    root = Path(root)
    missing = [name for name in _FMNIST_FILES.values() if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST files {missing} not found in {root}; "
            "install them with `apt-get install dataset-fashion-mnist`"
        )
    arrays = {key: read_idx(root / name) for key, name in _FMNIST_FILES.items()}
    out = []
    for split in ("tr", "te"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DataError(f"Fashion-MNIST {split} arrays have shapes {x.shape} and {y.shape}")
        out += [(x.astype(np.float32) / 255.0)[..., None], y.astype(np.int32)]
    return out[0], out[1], out[2], out[3]
