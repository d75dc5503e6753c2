"""Plain-mode pipeline: round trips within bounds, sizes, and every malformed payload."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.codec import (
    UpdateEncoder,
    decode_update,
    dense_float32_bytes,
    encode_update,
    parse_spec,
    payload_bound,
    predicted_weights,
)
from fedge.edge_client.codec.sparsify import random_indices
from fedge.edge_client.errors import CodecError

SHAPES = [(40, 30), (30,), (30, 10), (10,)]
MLP_SHAPES = [(784, 128), (128,), (128, 10), (10,)]  # 101,770 parameters


def _delta(shapes: list[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=s) * 0.01).astype(np.float32) for s in shapes]


def _encode(text: str, shapes: list[tuple[int, ...]] = SHAPES, seed: int = 0) -> bytes:
    return encode_update(
        _delta(shapes, seed), parse_spec(text), shapes, round_seed=9, rng=np.random.default_rng(1)
    )


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(
        [
            "none",
            "q8",
            "q4+rot",
            "q1:block=16",
            "q16",
            "topk:0.05+q8",
            "topk:0.1:tensor+q2",
            "randk:0.05+q4+rot",
            "randk:0.2:tensor+q8:block=32",
            "clip:0.05+topk:0.1",
            "randk:0.1",
            "topk:0.02+q4+rot+noef",
        ]
    ),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)
def test_decoder_reproduces_encoder_view(text: str, seed: int, round_seed: int) -> None:
    spec = parse_spec(text)
    encoded = UpdateEncoder(spec, SHAPES).encode(
        _delta(SHAPES, seed), round_seed=round_seed, rng_seed=seed
    )
    decoded = decode_update(encoded.payload, spec, SHAPES, round_seed=round_seed)
    assert len(encoded.payload) <= payload_bound(spec, SHAPES)
    for got, seen, shape in zip(decoded, encoded.decoded, SHAPES, strict=True):
        assert got.shape == shape and got.dtype == np.float32
        assert np.array_equal(got, seen)


def test_none_is_lossless() -> None:
    delta = _delta(SHAPES)
    rng = np.random.default_rng(0)
    payload = encode_update(delta, parse_spec("none"), SHAPES, round_seed=0, rng=rng)
    decoded = decode_update(payload, parse_spec("none"), SHAPES, round_seed=0)
    for got, want in zip(decoded, delta, strict=True):
        assert np.array_equal(got, want)
    assert len(payload) < dense_float32_bytes(SHAPES) + 64


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("block", [None, 16, 64])
def test_dense_quantization_within_bound(bits: int, block: int | None) -> None:
    text = f"q{bits}" + (f":block={block}" if block else "")
    delta = _delta(SHAPES, bits)
    decoded = decode_update(_encode(text, seed=bits), parse_spec(text), SHAPES, round_seed=9)
    for got, x in zip(decoded, delta, strict=True):
        flat, err = x.ravel().astype(np.float64), np.abs(got - x).ravel()
        size = block or flat.size
        for start in range(0, flat.size, size):
            s = np.abs(flat[start : start + size]).max() * (1 + 2**-10)  # float16 scale round-up
            assert np.all(err[start : start + size] <= 2 * s / (2**bits - 1) + 1e-7)


def test_rotation_error_bound_in_l2() -> None:
    """Rotation is orthogonal: ||x - x_hat||_2 < sqrt(m) * 2 s / (2^b - 1) in the rotated space,
    and rotating concentrates s near ||x|| * sqrt(2 ln m / m), far below max |x| for spiky x."""
    x = np.zeros(1000, dtype=np.float32)
    x[:3] = [5.0, -4.0, 3.0]
    spec_rot, spec_plain = parse_spec("q4+rot"), parse_spec("q4")
    errs = {}
    for spec in (spec_rot, spec_plain):
        payload = encode_update([x], spec, [(1000,)], round_seed=3, rng=np.random.default_rng(0))
        got = decode_update(payload, spec, [(1000,)], round_seed=3)[0]
        errs[str(spec)] = float(np.linalg.norm(got - x))
    assert errs["q4+rot"] < np.sqrt(1024) * 2 * np.linalg.norm(x) / 15
    assert errs["q4+rot"] < errs["q4"]


def test_topk_sends_the_largest_values_exactly() -> None:
    delta = _delta(SHAPES, 3)
    spec = parse_spec("topk:0.05")
    decoded = decode_update(_encode("topk:0.05", seed=3), spec, SHAPES, round_seed=9)
    flat_in = np.concatenate([d.ravel() for d in delta])
    flat_out = np.concatenate([d.ravel() for d in decoded])
    kept = np.flatnonzero(flat_out)
    assert kept.size == round(0.05 * flat_in.size)
    assert np.array_equal(flat_out[kept], flat_in[kept])
    assert np.abs(flat_in[kept]).min() >= np.abs(np.delete(flat_in, kept)).max()


def test_topk_per_tensor_keeps_k_in_each_tensor() -> None:
    spec = parse_spec("topk:0.1:tensor")
    decoded = decode_update(_encode("topk:0.1:tensor"), spec, SHAPES, round_seed=9)
    assert [int(np.count_nonzero(d)) for d in decoded] == [120, 3, 30, 1]


def test_randk_uses_the_shared_index_set_and_rescales_without_ef() -> None:
    delta = _delta(SHAPES, 4)
    flat_in = np.concatenate([d.ravel() for d in delta])
    k = 77  # round(0.05 * 1540)
    idx = random_indices(flat_in.size, k, round_seed=9, section=0)
    for text, factor in (("randk:0.05", 1.0), ("randk:0.05+noef", flat_in.size / k)):
        decoded = decode_update(_encode(text, seed=4), parse_spec(text), SHAPES, round_seed=9)
        flat_out = np.concatenate([d.ravel() for d in decoded])
        assert np.array_equal(np.flatnonzero(flat_out), idx)
        assert np.allclose(flat_out[idx], flat_in[idx] * factor, rtol=1e-6)


def test_randk_without_ef_is_unbiased() -> None:
    x = np.random.default_rng(0).normal(size=50).astype(np.float32)
    spec = parse_spec("randk:0.2+noef")
    runs = 2000
    total = np.zeros(50)
    for seed in range(runs):
        payload = encode_update([x], spec, [(50,)], round_seed=seed, rng=np.random.default_rng())
        total += decode_update(payload, spec, [(50,)], round_seed=seed)[0]
    # Each coordinate is x / 0.2 with probability 0.2, else 0: std = 2 |x|.
    assert np.all(np.abs(total / runs - x) <= 5 * 2 * np.abs(x) / np.sqrt(runs) + 1e-6)


def test_rotated_quantization_is_unbiased() -> None:
    x = np.random.default_rng(1).normal(size=100).astype(np.float32)
    spec = parse_spec("q2+rot")
    runs = 600
    total = np.zeros(100)
    for seed in range(runs):
        payload = encode_update([x], spec, [(100,)], round_seed=5, rng=np.random.default_rng(seed))
        total += decode_update(payload, spec, [(100,)], round_seed=5)[0]
    step = 2 * np.linalg.norm(x) / 3  # any rotated coordinate is at most ||x||
    assert np.all(np.abs(total / runs - x) <= 5 * step / (2 * np.sqrt(runs)))


def test_topk_one_percent_gives_over_100x_on_100k_parameters() -> None:
    payload = _encode("topk:0.01+q8", MLP_SHAPES)
    assert dense_float32_bytes(MLP_SHAPES) / len(payload) > 100


# ---- malformed payloads ------------------------------------------------------------------


def _mutate(text: str, change: Callable[[list], object]) -> bytes:
    top = msgpack.unpackb(_encode(text), raw=False)
    change(top)
    return msgpack.packb(top, use_bin_type=True)


def _set(path: tuple[int, ...], value: object) -> Callable[[list], None]:
    def change(top: list) -> None:
        node = top
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


def _late_indices() -> bytes:
    """A well-formed Elias-Fano block for 77 of 1540 whose indices all exceed 1539.

    4 low bits per index (floor(log2(1540 / 77))), 173 unary bits; every index gets high part 96
    and low part 15: 96 * 16 + 15 = 1551.
    """
    upper = np.zeros(22 * 8, dtype=np.uint8)
    upper[96 : 96 + 77] = 1
    return b"\xff" * 39 + np.packbits(upper, bitorder="little").tobytes()


CASES: list[tuple[str, str, Callable[[], bytes], str]] = [
    ("truncated", "q8", lambda: _encode("q8")[:-10], "not a valid msgpack"),
    ("trailing", "q8", lambda: _encode("q8") + b"\x00", "not a valid msgpack"),
    ("not msgpack", "q8", lambda: b"\xc1garbage", "not a valid msgpack"),
    ("empty", "q8", lambda: b"", "not a valid msgpack"),
    ("wrong version", "q8", lambda: _mutate("q8", _set((0,), 2)), "format version 2"),
    ("bool version", "q8", lambda: _mutate("q8", _set((0,), True)), "format version True"),
    ("other spec", "q4", lambda: _encode("q2"), "another spec"),
    ("not an array", "q8", lambda: msgpack.packb([1, 2]), "3-element array"),
    ("a map", "q8", lambda: msgpack.packb({"v": 1}), "max_map_len"),
    ("section count", "q8", lambda: _mutate("q8", lambda t: t[2].pop()), "hold 4 sections"),
    ("section shape", "q8", lambda: _mutate("q8", _set((2, 1), [b"", b""])), "section 1 must"),
    ("short values", "q8", lambda: _mutate("q8", _set((2, 0, 2), b"\x00" * 5)), "value bytes"),
    ("values type", "q8", lambda: _mutate("q8", _set((2, 0, 2), 7)), "values must be bytes"),
    ("missing scales", "q8", lambda: _mutate("q8", _set((2, 0, 1), None)), "scales must be"),
    ("scale length", "q8", lambda: _mutate("q8", _set((2, 0, 1), b"\x00" * 3)), "scale bytes"),
    (
        "nan scale",
        "q8",
        lambda: _mutate("q8", _set((2, 0, 1), np.array([np.nan], "<f2").tobytes())),
        "finite",
    ),
    (
        "negative scale",
        "q8",
        lambda: _mutate("q8", _set((2, 0, 1), np.array([-1.0], "<f4").tobytes())),
        "finite and >= 0",
    ),
    (
        "nan value",
        "none",
        lambda: _mutate("none", _set((2, 1, 2), np.full(30, np.nan, "<f4").tobytes())),
        "NaN",
    ),
    (
        "unexpected indices",
        "q8",
        lambda: _mutate("q8", _set((2, 0, 0), b"\x00")),
        "indices must be nil",
    ),
    (
        "index out of range",
        "topk:0.05+q8",
        lambda: _mutate("topk:0.05+q8", _set((2, 0, 0), _late_indices())),
        "out of range or not strictly increasing",
    ),
    (
        "index count",
        "topk:0.05+q8",
        lambda: _mutate("topk:0.05+q8", _set((2, 0, 0), b"\x00" * 61)),
        "holds 0 indices",
    ),
    (
        "index length",
        "topk:0.05+q8",
        lambda: _mutate("topk:0.05+q8", _set((2, 0, 0), b"\x00" * 10)),
        "index block is 10 bytes",
    ),
]


@pytest.mark.parametrize(("name", "text", "make", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_malformed_payload_raises(
    name: str, text: str, make: Callable[[], bytes], fragment: str
) -> None:
    with pytest.raises(CodecError) as info:
        decode_update(make(), parse_spec(text), SHAPES, round_seed=9)
    assert fragment in str(info.value)


def test_oversized_payload_rejected_before_parsing() -> None:
    spec = parse_spec("topk:0.05+q8")
    bound = payload_bound(spec, SHAPES)
    with pytest.raises(CodecError, match=f"exceeds the limit of {bound}"):
        decode_update(b"\x00" * (bound + 1), spec, SHAPES, round_seed=9)
    with pytest.raises(CodecError, match="exceeds the limit of 50"):
        decode_update(_encode("topk:0.05+q8"), spec, SHAPES, round_seed=9, max_bytes=50)


def test_wrong_shapes_or_round_seed_detected() -> None:
    spec = parse_spec("q8")
    payload = _encode("q8")
    with pytest.raises(CodecError, match="another spec or shapes"):
        decode_update(payload, spec, [(40, 30), (30,), (30, 10), (11,)], round_seed=9)
    with pytest.raises(CodecError, match="round_seed"):
        decode_update(payload, spec, SHAPES, round_seed=-1)
    with pytest.raises(CodecError, match="payload must be bytes"):
        decode_update("text", spec, SHAPES, round_seed=9)  # type: ignore[arg-type]


def test_bad_delta_rejected() -> None:
    spec = parse_spec("q8")
    encoder = UpdateEncoder(spec, SHAPES)
    delta = _delta(SHAPES)
    with pytest.raises(CodecError, match="3 tensors, expected 4"):
        encoder.encode(delta[:3], round_seed=0, rng_seed=0)
    with pytest.raises(CodecError, match=r"tensor 1 has shape \(31,\)"):
        encoder.encode([delta[0], np.zeros(31), *delta[2:]], round_seed=0, rng_seed=0)
    bad = [d.copy() for d in delta]
    bad[2][0, 0] = np.inf
    with pytest.raises(CodecError, match="tensor 2 must be finite"):
        encoder.encode(bad, round_seed=0, rng_seed=0)
    with pytest.raises(CodecError, match="rng_seed"):
        encoder.encode(delta, round_seed=0, rng_seed=2**64)
    with pytest.raises(CodecError, match="every dimension"):
        UpdateEncoder(spec, [(3, 0)])


def _flat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([t.astype(np.float64).ravel() for t in tensors])


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_predictive_coding_trains_from_the_prediction_and_the_server_adds_it_back(
    beta: float,
) -> None:
    spec = parse_spec(f"q16+pred:{beta}+noef")
    weights, prior = _delta(SHAPES, 2), _delta(SHAPES, 1)
    start = predicted_weights(spec, weights, prior)
    np.testing.assert_allclose(_flat(start), _flat(weights) + beta * _flat(prior), atol=1e-6)
    trained = _delta(SHAPES, 0)  # what local training adds to the predicted weights
    encoded = UpdateEncoder(spec, SHAPES).encode(trained, round_seed=9, rng_seed=3)
    bound = 2 * 0.1 / (2**16 - 1)  # q16 error bound for values below 0.1
    # What travels is what training added to the prediction ...
    np.testing.assert_allclose(_flat(encoded.decoded), _flat(trained), atol=bound)
    # ... and the server, given the same prior, gets the step from the global weights back.
    got = decode_update(encoded.payload, spec, SHAPES, round_seed=9, prior=prior)
    local = [s + t for s, t in zip(start, trained, strict=True)]
    np.testing.assert_allclose(_flat(got), _flat(local) - _flat(weights), atol=bound + 1e-6)
    without = decode_update(encoded.payload, spec, SHAPES, round_seed=9)
    np.testing.assert_allclose(_flat(without), _flat(encoded.decoded), atol=0)


def test_without_a_prior_or_pred_training_starts_from_the_global_weights() -> None:
    weights, prior = _delta(SHAPES, 2), _delta(SHAPES, 1)
    # The first round has no prior: nothing is predicted on either side.
    first = predicted_weights(parse_spec("topk:0.05+q4+pred"), weights, None)
    assert all(np.array_equal(a, b) and a.dtype == np.float32
               for a, b in zip(first, weights, strict=True))
    unpredicted = predicted_weights(parse_spec("topk:0.05+q4"), weights, prior)
    assert all(np.array_equal(a, b) for a, b in zip(unpredicted, weights, strict=True))


def test_prediction_needs_a_prior_of_the_update_shapes() -> None:
    spec = parse_spec("q8+pred")
    with pytest.raises(CodecError, match="3 tensors, expected 4"):
        predicted_weights(spec, _delta(SHAPES), _delta(SHAPES)[:3])
    bad = _delta(SHAPES)
    bad[1][0] = np.nan
    with pytest.raises(CodecError, match="tensor 1 must be finite"):
        decode_update(_encode("q8+pred"), spec, SHAPES, round_seed=9, prior=bad)
