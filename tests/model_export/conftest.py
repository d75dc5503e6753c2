"""Fixtures for model_export tests: the zoo built and exported once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.model_export import ModelSpec, build, export_spec
from fedge.model_export.datasets import load_fashion_mnist

ZOO = ("mlp-digits", "cnn-fmnist", "transfer-fmnist")


@pytest.fixture(scope="session")
def zoo_specs() -> dict[str, ModelSpec]:
    """Zoo model name -> spec built with seed 0 (transfer-fmnist pretrains once here)."""
    return {name: build(name, seed=0) for name in ZOO}


@pytest.fixture(scope="session")
def zoo_artifacts(
    zoo_specs: dict[str, ModelSpec], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Zoo model name -> directory holding its exported artifact (seed 0, batch 32)."""
    root = tmp_path_factory.mktemp("zoo")
    for name, spec in zoo_specs.items():
        export_spec(spec, root / name, seed=0)
    return {name: root / name for name in ZOO}


@pytest.fixture(scope="session")
def fmnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST (x_tr, y_tr, x_te, y_te) loaded once."""
    return load_fashion_mnist()
