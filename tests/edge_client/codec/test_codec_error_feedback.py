"""Error feedback: mass conservation, persistence across restarts, corrupt and stale files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_client.codec import ErrorFeedback, ResidualStatus, UpdateEncoder, parse_spec

SHAPES = [(50, 20), (20,)]


def _delta(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _flat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([t.ravel().astype(np.float64) for t in tensors])


@pytest.mark.parametrize("text", ["topk:0.02+q8", "randk:0.05+q4+rot", "q2", "clip:1+topk:0.1"])
def test_mass_is_conserved_every_round(tmp_path: Path, text: str) -> None:
    encoder = UpdateEncoder(parse_spec(text), SHAPES, tmp_path / "residual.bin")
    assert encoder.residual_status is ResidualStatus.EMPTY
    assert encoder.feedback is not None
    for round_no in range(5):
        old = _flat(encoder.feedback.residual)
        delta = _delta(round_no)
        encoded = encoder.encode(delta, round_seed=round_no, rng_seed=round_no)
        new = _flat(encoder.feedback.residual)
        assert np.allclose(_flat(delta) + old, _flat(encoded.decoded) + new, atol=1e-5)
        assert np.abs(new).max() > 0  # something lossy happened and was kept


def test_residual_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "residual.bin"
    spec = parse_spec("topk:0.05+q8")
    first = UpdateEncoder(spec, SHAPES, path)
    first.encode(_delta(0), round_seed=1, rng_seed=1)
    assert first.feedback is not None
    saved = first.feedback.residual
    restarted = UpdateEncoder(spec, SHAPES, path)
    assert restarted.residual_status is ResidualStatus.LOADED
    assert restarted.feedback is not None
    for a, b in zip(saved, restarted.feedback.residual, strict=True):
        assert np.array_equal(a, b)
    # Both continue identically from the persisted state.
    before = first.encode(_delta(1), round_seed=2, rng_seed=2)
    after = restarted.encode(_delta(1), round_seed=2, rng_seed=2)
    assert before.payload == after.payload
    assert not list(path.parent.glob("*.tmp"))


def test_residual_feeds_the_next_round(tmp_path: Path) -> None:
    spec = parse_spec("topk:0.01")
    encoder = UpdateEncoder(spec, SHAPES, None)
    delta = _delta(3)
    sent_total = np.zeros(1020)
    for round_no in range(150):
        step = delta if round_no == 0 else [np.zeros(s, np.float32) for s in SHAPES]
        sent_total += _flat(encoder.encode(step, round_seed=round_no, rng_seed=0).decoded)
    # With zero new deltas, error feedback eventually delivers everything: 10 values a round.
    assert np.allclose(sent_total, _flat(delta), atol=1e-6)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00garbage", b"\x94\x01\x90\x05\xc4\x00", b"\xff" * 10],
    ids=["empty", "garbage", "wrong checksum", "not msgpack"],
)
def test_corrupt_file_is_reported_and_reset(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "residual.bin"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        feedback = ErrorFeedback(SHAPES, path)
    assert feedback.status is ResidualStatus.CORRUPT
    assert "starting from zero" in caplog.text
    assert not np.any(feedback.flat)


def test_flipped_byte_and_nan_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "residual.bin"
    feedback = ErrorFeedback(SHAPES, path)
    feedback.flat = np.ones(1020, dtype=np.float32)
    feedback.save()
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40
    path.write_bytes(bytes(raw))
    assert ErrorFeedback(SHAPES, path).status is ResidualStatus.CORRUPT
    feedback.flat[7] = np.nan
    feedback.save()
    assert ErrorFeedback(SHAPES, path).status is ResidualStatus.CORRUPT


def test_shape_change_resets(tmp_path: Path) -> None:
    path = tmp_path / "residual.bin"
    UpdateEncoder(parse_spec("q4"), SHAPES, path).encode(_delta(0), round_seed=0, rng_seed=0)
    other = ErrorFeedback([(50, 20), (21,)], path)
    assert other.status is ResidualStatus.SHAPE_MISMATCH
    assert not np.any(other.flat)


def test_error_feedback_off_keeps_no_state(tmp_path: Path) -> None:
    path = tmp_path / "residual.bin"
    encoder = UpdateEncoder(parse_spec("topk:0.05+noef"), SHAPES, path)
    encoder.encode(_delta(0), round_seed=0, rng_seed=0)
    assert encoder.feedback is None and not path.exists()
