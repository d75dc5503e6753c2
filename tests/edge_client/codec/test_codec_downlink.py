"""Downlink model deltas: reconstruction, base-model check, no drift across rounds."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fedge.edge_client.codec import (
    apply_model_delta,
    decode_model_delta,
    encode_model_delta,
    parse_spec,
)
from fedge.edge_client.errors import CodecError

SHAPES = [(64, 32), (32,), (32, 4), (4,)]


def _model(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _dist(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(
        np.sqrt(sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in zip(a, b, strict=True)))
    )


def test_lossless_delta_rebuilds_new_model() -> None:
    old, new = _model(0), _model(1)
    got = apply_model_delta(old, encode_model_delta(new, old, parse_spec("none")))
    assert _dist(got, new) < 1e-5
    assert [g.shape for g in got] == SHAPES and all(g.dtype == np.float32 for g in got)


@pytest.mark.parametrize("text", ["q8", "q4+rot", "topk:0.1+q8", "randk:0.2+q8:block=64+noef"])
def test_server_tracking_devices_version_has_no_drift(text: str) -> None:
    """Encoding each delta from what devices hold keeps them within one round's error."""
    spec = parse_spec(text)
    rng = np.random.default_rng(5)
    server = _model(0)
    held = [w.copy() for w in server]
    for round_no in range(30):
        server = [w + 0.01 * rng.normal(size=w.shape).astype(np.float32) for w in server]
        payload = encode_model_delta(server, held, spec, seed=round_no)
        held = apply_model_delta(held, payload)
    # The gap stays about one round's worth of compression error, not 30 rounds' worth.
    step = np.sqrt(sum(w.size for w in server)) * 0.01
    assert _dist(held, server) < 3 * step


def test_payload_is_deterministic_and_compact() -> None:
    old, new = _model(0), _model(1)
    spec = parse_spec("topk:0.05+q8")
    a = encode_model_delta(new, old, spec, seed=3)
    assert a == encode_model_delta(new, old, spec, seed=3)
    assert len(a) < 0.05 * 4 * sum(int(np.prod(s)) for s in SHAPES)


def test_wrong_base_model_rejected() -> None:
    old, new = _model(0), _model(1)
    payload = encode_model_delta(new, old, parse_spec("q8"))
    stale = [w.copy() for w in old]
    stale[1][0] += 1.0
    with pytest.raises(CodecError, match="different base model"):
        apply_model_delta(stale, payload)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda t: t.__setitem__(0, 9), "downlink version 9"),
        (lambda t: t.__setitem__(1, "q3"), "bits must be one of"),
        (lambda t: t.__setitem__(1, 5), "wrong types"),
        (lambda t: t.__setitem__(2, -1), "seed"),
        (lambda t: t.__setitem__(4, t[4][:-5]), "not a valid msgpack"),
        (lambda t: t.pop(), "must be [version"),
    ],
)
def test_malformed_downlink_rejected(mutate: object, fragment: str) -> None:
    old, new = _model(0), _model(1)
    top = msgpack.unpackb(encode_model_delta(new, old, parse_spec("q8")), raw=False)
    mutate(top)  # type: ignore[operator]
    for decode in (lambda p: apply_model_delta(old, p), lambda p: decode_model_delta(p, SHAPES).step):
        with pytest.raises(CodecError) as info:
            decode(msgpack.packb(top, use_bin_type=True))
        assert fragment in str(info.value)
        with pytest.raises(CodecError, match="not valid msgpack"):
            decode(b"\xc1")


@pytest.mark.parametrize("text", ["none", "q8", "topk:0.1+q4"])
def test_step_is_what_the_delta_adds_to_the_held_model(text: str) -> None:
    old, new = _model(0), _model(1)
    payload = encode_model_delta(new, old, parse_spec(text), seed=4)
    step = decode_model_delta(payload, SHAPES).step
    held = apply_model_delta(old, payload)
    assert [s.shape for s in step] == SHAPES and all(s.dtype == np.float32 for s in step)
    for s, h, o in zip(step, held, old, strict=True):
        np.testing.assert_allclose(s, h.astype(np.float64) - o, atol=1e-5)
    # The step needs no base model, but it does need the model's shapes.
    with pytest.raises(CodecError, match="another spec or shapes"):
        decode_model_delta(payload, [(64, 32), (32,), (32, 4), (5,)])
