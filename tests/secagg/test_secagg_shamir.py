"""Shamir sharing: any t shares reconstruct, t - 1 do not, polynomials are fresh."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    Share,
    decode_share_value,
    encode_share_value,
    reconstruct_secret,
    split_secret,
)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 25),
    data=st.data(),
)
def test_any_t_shares_reconstruct(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = split_secret(secret, t, xs)
    subset = data.draw(st.permutations(shares)).copy()[:t]
    assert reconstruct_secret(subset, t) == secret


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(2, 12))
def test_t_minus_one_shares_do_not_reconstruct(secret: bytes, t: int) -> None:
    shares = split_secret(secret, t, list(range(1, t + 3)))
    with pytest.raises(SecAggError, match=f"need {t} shares"):
        reconstruct_secret(shares[: t - 1], t)
    # Interpolating t - 1 points as if the polynomial had degree t - 2 gives an unrelated
    # value (the missing random coefficient hides the secret): never the secret itself.
    with pytest.raises(SecAggError, match="out of range"):
        reconstruct_secret(shares[: t - 1], t - 1)


def test_sharing_uses_a_fresh_random_polynomial() -> None:
    secret = bytes(32)
    a = split_secret(secret, 3, [1, 2, 3, 4])
    b = split_secret(secret, 3, [1, 2, 3, 4])
    assert [s.y for s in a] != [s.y for s in b]
    # With t = 3, any two shares are consistent with every secret: one degree-2
    # polynomial passes through them and (0, s') for any s'. Check it for two s'.
    for other in (bytes(32), os.urandom(32)):
        forged = [Share(0, int.from_bytes(other, "big")), a[0], a[1]]
        # interpolate through (0, s'), x1, x2 and evaluate at 0: consistent by construction
        assert reconstruct_secret([a[0], a[1], Share(3, _through(forged, 3))], 3) == other


def _through(points: list[Share], x: int) -> int:
    total = 0
    for i, pi in enumerate(points):
        num, den = 1, 1
        for j, pj in enumerate(points):
            if i != j:
                num = num * (x - pj.x) % PRIME
                den = den * (pi.x - pj.x) % PRIME
        total = (total + pi.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def test_shamir_input_validation() -> None:
    with pytest.raises(SecAggError, match="32 bytes"):
        split_secret(b"short", 2, [1, 2, 3])
    with pytest.raises(SecAggError, match="threshold"):
        split_secret(bytes(32), 4, [1, 2, 3])
    with pytest.raises(SecAggError, match="distinct"):
        split_secret(bytes(32), 2, [1, 1, 3])
    with pytest.raises(SecAggError, match="distinct"):
        split_secret(bytes(32), 2, [0, 1, 3])
    shares = split_secret(bytes(32), 2, [1, 2, 3])
    with pytest.raises(SecAggError, match="distinct"):
        reconstruct_secret([shares[0], shares[0]], 2)


def test_share_encoding_round_trip_and_range() -> None:
    y = PRIME - 1
    assert decode_share_value(encode_share_value(y)) == y
    assert len(encode_share_value(0)) == SHARE_BYTES
    with pytest.raises(SecAggError, match="not an element"):
        decode_share_value(PRIME.to_bytes(SHARE_BYTES, "big"))
    with pytest.raises(SecAggError, match="66 bytes"):
        decode_share_value(b"\x00" * 65)
