"""Ring (secure-aggregation) mode: exact modular sums, wrap-around guard, shared layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.edge_client.codec import RingCodec, parse_spec
from fedge.edge_client.codec.ring import check_count
from fedge.edge_client.codec.sparsify import random_indices
from fedge.edge_client.errors import CodecError

SHAPES = [(30, 20), (20,), (20, 5), (5,)]  # 725 parameters


def _deltas(devices: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(11)
    return [[(rng.normal(size=s) * 0.1).astype(np.float32) for s in SHAPES] for _ in range(devices)]


def _flat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([t.ravel().astype(np.float64) for t in tensors])


@pytest.mark.parametrize(
    ("text", "bits"),
    [("none", 16), ("randk:0.1+q16+rot", 16), ("randk:0.2:tensor", 8), ("q8+rot", 8)],
)
def test_masked_modular_sum_decodes_to_sum_of_device_decodes(text: str, bits: int) -> None:
    codec = RingCodec(parse_spec(text), SHAPES, clip=2.0, bits=bits, n_max=100)
    devices = _deltas(5)
    updates = [codec.encode(d, round_seed=77, rng_seed=i) for i, d in enumerate(devices)]
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 2**32, size=codec.length, dtype=np.uint32) for _ in devices]
    # Pairwise-cancelling masks as secure aggregation adds them: device i adds m_i - m_(i+1).
    masked = [u.vector + masks[i] - masks[(i + 1) % len(masks)] for i, u in enumerate(updates)]
    ring_sum = np.zeros(codec.length, dtype=np.uint32)
    for vector in masked:
        ring_sum += vector  # uint32 arithmetic wraps mod 2^32
    assert np.array_equal(ring_sum, np.sum([u.vector for u in updates], axis=0, dtype=np.uint64))
    total = codec.decode_sum(ring_sum, len(devices), round_seed=77)
    expected = np.sum([_flat(u.decoded) for u in updates], axis=0)
    assert np.allclose(_flat(total), expected, atol=1e-5)


def test_device_decode_is_within_the_quantization_bound() -> None:
    codec = RingCodec(parse_spec("randk:0.5+q16+rot"), SHAPES, clip=1.0, bits=16, n_max=10)
    delta = _deltas(1)[0]
    update = codec.encode(delta, round_seed=3, rng_seed=0)
    idx = random_indices(725, 363, round_seed=3, section=0)  # round(0.5 * 725) = 363
    sent = _flat(delta)[idx]
    sent = sent * min(1.0, 1.0 / np.linalg.norm(sent))  # clipped to L2 norm 1
    got = _flat(update.decoded)
    step = 2 * codec.bounds / (2**16 - 1)
    assert np.linalg.norm(got[idx] - sent) <= np.linalg.norm(step)
    assert not np.any(np.delete(got, idx))
    assert update.vector.dtype == np.uint32 and update.vector.max() < 2**16


def test_rotation_bounds_are_tighter_and_hold() -> None:
    codec = RingCodec(parse_spec("q16+rot"), [(4096,)], clip=1.0, bits=16, n_max=10)
    assert codec.bounds.max() < 0.15  # vs 1.0 without rotation
    x = np.zeros(4096, dtype=np.float32)
    x[:2] = [0.8, 0.6]  # the worst case for a coordinate-wise range: all mass in few entries
    update = codec.encode([x], round_seed=5, rng_seed=0)
    assert np.allclose(update.decoded[0], x, atol=1e-3)


def test_wrap_around_guard() -> None:
    check_count(65537, 16)
    with pytest.raises(CodecError, match="would wrap around"):
        check_count(65538, 16)
    with pytest.raises(CodecError, match="would wrap around"):
        RingCodec(parse_spec("none"), SHAPES, clip=1.0, bits=16, n_max=70_000)
    codec = RingCodec(parse_spec("none"), SHAPES, clip=1.0, bits=20, n_max=10)
    zeros = np.zeros(codec.length, dtype=np.uint32)
    with pytest.raises(CodecError, match="would wrap around"):
        codec.decode_sum(zeros, 5000, round_seed=0)


def test_decode_sum_rejects_bad_input() -> None:
    codec = RingCodec(parse_spec("none"), SHAPES, clip=1.0, bits=8, n_max=10)
    with pytest.raises(CodecError, match="uint32 vector of length 725"):
        codec.decode_sum(np.zeros(724, dtype=np.uint32), 2, round_seed=0)
    with pytest.raises(CodecError, match="uint32 vector"):
        codec.decode_sum(np.zeros(725, dtype=np.int64), 2, round_seed=0)
    with pytest.raises(CodecError, match="masks"):
        codec.decode_sum(np.full(725, 511, dtype=np.uint32), 2, round_seed=0)
    with pytest.raises(CodecError, match="device count"):
        codec.decode_sum(np.zeros(725, dtype=np.uint32), 0, round_seed=0)


@pytest.mark.parametrize(
    ("text", "kwargs", "fragment"),
    [
        ("topk:0.01+q8", {}, "top-k is not allowed in secure mode"),
        ("q8:block=64", {}, "block scales are not used"),
        ("q8+pred", {}, "pred is not used in secure mode"),
        ("clip:3+q8", {}, "spec clips to 3.0"),
        ("q4", {}, "spec quantizes to 4 bits"),
        ("none", {"clip": 0.0}, "finite number > 0"),
        ("none", {"bits": 32}, "[1, 31]"),
    ],
)
def test_invalid_configurations(text: str, kwargs: dict[str, float], fragment: str) -> None:
    params: dict = {"clip": 1.0, "bits": 8, "n_max": 10, **kwargs}
    with pytest.raises(CodecError) as info:
        RingCodec(parse_spec(text), SHAPES, **params)
    assert fragment in str(info.value)


def test_ring_error_feedback_conserves_mass(tmp_path: Path) -> None:
    path = tmp_path / "ring_residual.bin"
    codec = RingCodec(
        parse_spec("randk:0.1+q8+rot"), SHAPES, clip=0.5, bits=8, n_max=10, residual_path=path
    )
    assert codec.feedback is not None
    for round_no, delta in enumerate(_deltas(3)):
        old = _flat(codec.feedback.residual)
        update = codec.encode(delta, round_seed=round_no, rng_seed=round_no)
        new = _flat(codec.feedback.residual)
        assert np.allclose(_flat(delta) + old, _flat(update.decoded) + new, atol=1e-5)
    assert path.exists()
