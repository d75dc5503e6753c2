"""Shared fixtures: exported artifacts, digits data, a real Mosquitto, the server's signing key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported up front: a late import races CPython 3.11's compiler)
import numpy as np
import pytest
from fedge_testing import MosquittoProcess

from fedge.edge_client.signing import load_or_create_signing_key


@pytest.fixture(scope="session")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mlp-digits` exported once per test session."""
    from fedge.model_export import export_model

    out = tmp_path_factory.mktemp("mlp-digits")
    export_model("mlp-digits", out, batch_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from fedge.model_export.datasets import load_digits_arrays

    return load_digits_arrays(test_fraction=0.25, seed=0)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[Path, Path]:
    """The server's Ed25519 key (private file, public file)."""
    key_file = tmp_path / "server-state" / "signing.key"
    load_or_create_signing_key(key_file)
    return key_file, key_file.with_suffix(".pub")
