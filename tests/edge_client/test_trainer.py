"""LocalTrainer: real learning, exact masked batches, weight and input validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.errors import ArtifactError, ConfigError, DataError
from fedge.edge_client.trainer import LocalTrainer

Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture()
def trainer(mlp_artifact: Path) -> LocalTrainer:
    return LocalTrainer(load_artifact(mlp_artifact))


@pytest.fixture(scope="module")
def cnn_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedge.model_export import export_model

    out = tmp_path_factory.mktemp("cnn-fmnist")
    export_model("cnn-fmnist", out, seed=0)
    return out


def test_mlp_digits_reaches_90_percent_on_held_out_digits(
    trainer: LocalTrainer, digits: Digits
) -> None:
    x_tr, y_tr, x_te, y_te = digits
    before = trainer.evaluate(x_te, y_te)
    result = trainer.fit(x_tr, y_tr, epochs=15, lr=0.1, seed=0)
    after = trainer.evaluate(x_te, y_te)
    assert before.accuracy < 0.3
    assert after.accuracy >= 0.90
    assert after.examples == len(x_te)
    assert result.examples == len(x_tr)
    assert result.steps == 15 * -(-len(x_tr) // 32)
    assert result.accuracy >= 0.90 and result.loss < before.loss
    assert result.wall_time_s > 0


def test_cnn_fmnist_loss_falls(cnn_artifact: Path) -> None:
    from fedge.model_export.datasets import load_fashion_mnist

    x_tr, y_tr, x_te, y_te = load_fashion_mnist()
    trainer = LocalTrainer(load_artifact(cnn_artifact))
    before = trainer.evaluate(x_te[:1000], y_te[:1000])
    result = trainer.fit(x_tr[:6400], y_tr[:6400], epochs=1, lr=0.1, seed=0, max_steps=200)
    after = trainer.evaluate(x_te[:1000], y_te[:1000])
    assert result.steps == 200 and result.examples == 6400
    assert after.loss < 0.75 * before.loss
    assert after.accuracy > before.accuracy + 0.3


def test_partial_last_batch_is_masked_exactly_like_tf(
    trainer: LocalTrainer, digits: Digits
) -> None:
    """Two steps (32 + 8 rows) match the same two SGD steps computed by TF autodiff."""
    from fedge.model_export import build
    from fedge.model_export.verify import reference_gradients

    x, y = digits[0][:40], digits[1][:40]
    spec = build("mlp-digits")
    params = trainer.get_weights()
    order = np.random.default_rng(11).permutation(40)
    lr = 0.05
    for rows in (order[:32], order[32:]):
        xb = np.zeros((32, 64), np.float32)
        yb = np.zeros(32, np.int32)
        mask = np.zeros(32, np.float32)
        xb[: len(rows)], yb[: len(rows)], mask[: len(rows)] = x[rows], y[rows], 1.0
        _, grads = reference_gradients(spec, params, xb, yb, mask)
        params = [p - np.float32(lr) * g for p, g in zip(params, grads, strict=True)]
    result = trainer.fit(x, y, epochs=1, lr=lr, seed=11)
    assert result.steps == 2 and result.examples == 40
    for got, want in zip(trainer.get_weights(), params, strict=True):
        assert np.abs(got - want).max() <= 1e-5


def test_fit_is_seeded(mlp_artifact: Path, digits: Digits) -> None:
    x, y = digits[0][:300], digits[1][:300]
    runs = []
    for seed in (1, 1, 2):
        trainer = LocalTrainer(load_artifact(mlp_artifact))
        trainer.fit(x, y, epochs=2, lr=0.1, seed=seed)
        runs.append(trainer.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_cnn_trains_the_same_with_and_without_xnnpack(cnn_artifact: Path) -> None:
    """XNNPACK takes part of the conv model's ops; ten SGD steps agree to float rounding."""
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(320, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 320)
    weights = []
    for xnnpack in (True, False):
        trainer = LocalTrainer(load_artifact(cnn_artifact), xnnpack=xnnpack)
        trainer.fit(x, y, epochs=1, lr=0.05, seed=0)
        weights.append(trainer.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(
        weights[0][0], LocalTrainer(load_artifact(cnn_artifact)).get_weights()[0]
    )


def test_max_steps_and_progress(trainer: LocalTrainer, digits: Digits) -> None:
    x, y = digits[0][:100], digits[1][:100]  # 4 steps per epoch
    calls: list[tuple[int, int]] = []
    result = trainer.fit(
        x, y, epochs=3, lr=0.1, seed=0, max_steps=6, progress=lambda s, t: calls.append((s, t))
    )
    assert result.steps == 6
    assert calls == [(i, 6) for i in range(1, 7)]
    assert result.examples == 64  # the second epoch stopped after two batches
    full = trainer.fit(x, y, epochs=2, lr=0.1, seed=0)
    assert full.steps == 8 and full.examples == 100


def test_train_accuracy_is_the_trained_models_accuracy_on_the_epoch(
    trainer: LocalTrainer, digits: Digits
) -> None:
    x, y = digits[0][:200], digits[1][:200]
    result = trainer.fit(x, y, epochs=3, lr=0.1, seed=0)
    assert result.accuracy == pytest.approx(trainer.evaluate(x, y).accuracy)


def test_evaluate_and_predict_agree_with_numpy(trainer: LocalTrainer, digits: Digits) -> None:
    x, y = digits[2][:77], digits[3][:77]  # 2 full batches + 13 padded rows
    trainer.fit(digits[0], digits[1], epochs=1, lr=0.1, seed=0)
    logits = trainer.predict(x)
    assert logits.shape == (77, 10)
    # rows are independent of their batch: predicting a slice gives the same logits
    assert np.allclose(trainer.predict(x[40:45]), logits[40:45], atol=1e-6)
    shifted = logits - logits.max(axis=1, keepdims=True)
    ce = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(77), y]
    result = trainer.evaluate(x, y)
    assert result.examples == 77
    assert result.accuracy == pytest.approx(float(np.mean(logits.argmax(1) == y)))
    assert result.loss == pytest.approx(float(ce.mean()), rel=1e-5)


def test_weights_round_trip_in_manifest_order(trainer: LocalTrainer) -> None:
    rng = np.random.default_rng(3)
    new = [rng.normal(size=t.shape).astype(np.float32) for t in trainer.manifest.tensors]
    trainer.set_weights(new)
    got = trainer.get_weights()
    assert [w.shape for w in got] == [t.shape for t in trainer.manifest.tensors]
    assert all(np.array_equal(a, b) for a, b in zip(got, new, strict=True))


def _bad_weights(trainer: LocalTrainer, case: str) -> list[Any]:
    good = trainer.get_weights()
    if case == "count":
        return good[:-1]
    if case == "shape":
        return [good[0].T.copy(), *good[1:]]
    if case == "dtype":
        return [good[0].astype(np.float64), *good[1:]]
    if case == "type":
        return [good[0].tolist(), *good[1:]]
    bad = [w.copy() for w in good]
    bad[2][0, 0] = np.nan if case == "nan" else np.inf
    return bad


@pytest.mark.parametrize("case", ["count", "shape", "dtype", "type", "nan", "inf"])
def test_bad_weights_are_refused_and_change_nothing(trainer: LocalTrainer, case: str) -> None:
    before = trainer.get_weights()
    with pytest.raises(ArtifactError):
        trainer.set_weights(_bad_weights(trainer, case))
    assert all(np.array_equal(a, b) for a, b in zip(trainer.get_weights(), before, strict=True))


def _bad_data(case: str, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    if case == "shape":
        return x.reshape(-1, 8, 8), y
    if case == "dtype":
        return x.astype(np.float64), y
    if case == "list":
        return x.tolist(), y
    if case == "nan":
        x = x.copy()
        x[3, 5] = np.nan
        return x, y
    if case == "label_high":
        return x, np.where(np.arange(len(y)) == 0, 10, y)
    if case == "label_negative":
        return x, np.where(np.arange(len(y)) == 0, -1, y)
    if case == "label_float":
        return x, y.astype(np.float32)
    if case == "label_length":
        return x, y[:-1]
    return x[:0], y[:0]


@pytest.mark.parametrize(
    "case",
    [
        "shape",
        "dtype",
        "list",
        "nan",
        "label_high",
        "label_negative",
        "label_float",
        "label_length",
        "empty",
    ],
)
def test_bad_data_raises_data_error(trainer: LocalTrainer, digits: Digits, case: str) -> None:
    x, y = _bad_data(case, digits[0][:50], digits[1][:50])
    with pytest.raises(DataError):
        trainer.fit(x, y, epochs=1, lr=0.1, seed=0)
    with pytest.raises(DataError):
        trainer.evaluate(x, y)


def test_predict_checks_its_input(trainer: LocalTrainer) -> None:
    with pytest.raises(DataError, match="shape"):
        trainer.predict(np.zeros((3, 65), np.float32))
    with pytest.raises(DataError, match="NaN"):
        trainer.predict(np.full((3, 64), np.inf, np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0, "lr": 0.1},
        {"epochs": True, "lr": 0.1},
        {"epochs": 1, "lr": 0.0},
        {"epochs": 1, "lr": float("nan")},
        {"epochs": 1, "lr": "0.1"},
        {"epochs": 1, "lr": 0.1, "max_steps": 0},
    ],
)
def test_bad_training_settings_raise_config_error(
    trainer: LocalTrainer, digits: Digits, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError):
        trainer.fit(digits[0][:10], digits[1][:10], seed=0, **kwargs)
