"""Shamir t-of-n secret sharing of 32-byte keys over the prime field GF(2^521 - 1)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from fedge.edge_client.errors import SecAggError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8): one field element, big-endian
SECRET_BYTES = 32


@dataclass(frozen=True)
class Share:
    """One point (x, f(x)) of the sharing polynomial; x is the holder's index (>= 1)."""

    x: int
    y: int


def encode_share_value(y: int) -> bytes:
    """Big-endian 66-byte encoding of a field element."""
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share_value(raw: bytes) -> int:
    """Inverse of :func:`encode_share_value`; raises SecAggError if not a field element."""
    if len(raw) != SHARE_BYTES:
        raise SecAggError(f"a share value must be {SHARE_BYTES} bytes, got {len(raw)}")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise SecAggError("a share value is not an element of the field")
    return y


def split_secret(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the returned shares recover it.

    Parameters
    ----------
    secret
        The 32-byte key to share (the constant term of a random polynomial of degree
        ``threshold - 1`` whose other coefficients are uniform in the field).
    threshold
        Number of shares needed to reconstruct (1 <= threshold <= len(xs)).
    xs
        Distinct, non-zero x-coordinates, one per share holder.

    Returns
    -------
    list[Share]
        ``Share(x, f(x))`` for each x in ``xs``, in that order.
    """
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"the secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be between 1 and {len(xs)} shares")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share x-coordinates must be distinct and non-zero")
    coeffs = [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    coeffs.append(int.from_bytes(secret, "big"))  # highest degree first, secret last
    out = []
    for x in xs:
        acc = 0
        for c in coeffs:  # Horner, with the cheap Mersenne reduction 2^521 = 1 (mod p)
            acc = acc * x + c
            acc = (acc & PRIME) + (acc >> 521)
        out.append(Share(x, acc % PRIME))
    return out


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum l_i f(x_i) for any polynomial of degree < len(xs)."""
    # l_i = prod_{j != i} x_j / (x_j - x_i). The differences are small integers, so the
    # denominators are exact integer products, inverted together with one modular inverse.
    numerator = 1
    for x in xs:
        numerator = numerator * x % PRIME
    dens = [xi * math.prod(xj - xi for xj in xs if xj != xi) % PRIME for xi in xs]
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    coeffs = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        coeffs[i] = numerator * inv % PRIME * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(coeffs)


def reconstruct_secret(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the 32-byte secret from the first ``threshold`` of ``shares``.

    Raises
    ------
    SecAggError
        With fewer than ``threshold`` shares, duplicate x-coordinates, or when the
        interpolated value is not a 32-byte secret (a corrupted or foreign share).
    """
    if threshold < 1 or len(shares) < threshold:
        raise SecAggError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    used = shares[:threshold]
    xs = tuple(s.x for s in used)
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share x-coordinates must be distinct and non-zero")
    value = sum(c * s.y for c, s in zip(_lagrange_at_zero(xs), used, strict=True)) % PRIME
    if value >> (8 * SECRET_BYTES):
        raise SecAggError("shares are inconsistent: the interpolated secret is out of range")
    return value.to_bytes(SECRET_BYTES, "big")
