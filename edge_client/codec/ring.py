"""Secure-aggregation mode: every device quantizes with the same fixed ranges into Z_(2^32).

The modular sum of the devices' vectors is then the exact integer sum of their levels (the
wrap-around guard makes sure it never exceeds 2^32), and :meth:`RingCodec.decode_sum` maps it
back to the sum of their dequantized updates.

Ranges: the sent values are clipped to L2 norm ``clip``, so each coordinate lies in
``[-clip, clip]``. With rotation, a coordinate of a chunk of size d is a Rademacher sum with
variance proxy ``clip^2 / d``; Hoeffding and a union bound over all M ring coordinates give
``|y| <= clip * sqrt(2 ln(2M / DELTA) / d)`` except with probability DELTA, so that tighter bound
is used (values beyond it are clipped; error feedback keeps the rest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.error_feedback import ErrorFeedback
from fedge.edge_client.codec.layout import check_shapes, sections
from fedge.edge_client.codec.pipeline import clip_l2, flatten, unflatten
from fedge.edge_client.codec.quantize import dequantize, level_count, stochastic_round
from fedge.edge_client.codec.rotation import chunk_sizes, rotate, unrotate
from fedge.edge_client.codec.seeds import check_seed
from fedge.edge_client.codec.sparsify import random_indices
from fedge.edge_client.codec.spec import CodecSpec, Sparsifier
from fedge.edge_client.errors import CodecError

DELTA = 1e-9
RING = 1 << 32


@dataclass(frozen=True)
class RingUpdate:
    """A device's ring vector (uint32, to be masked and summed) and its own decoded update."""

    vector: Array
    decoded: list[Array]


def _check_params(spec: CodecSpec, clip: float, bits: int, n_max: int) -> None:
    if spec.sparsifier is Sparsifier.TOPK:
        raise CodecError(
            "top-k is not allowed in secure mode: each device would pick its own indices and "
            "the masked vectors would not line up; use randk:<fraction> (shared index set)"
        )
    if spec.block is not None:
        raise CodecError("block scales are not used in secure mode (ranges are fixed); drop block=")
    if spec.predict is not None:
        raise CodecError(
            "pred is not used in secure mode: the secure path does not add the prediction back "
            "to the unmasked sum; drop pred"
        )
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise CodecError(f"ring clip must be a finite number > 0, got {clip!r}")
    if spec.clip is not None and spec.clip != clip:
        raise CodecError(f"spec clips to {spec.clip} but the ring codec was given clip={clip}")
    if not (isinstance(bits, int) and 1 <= bits <= 31):
        raise CodecError(f"ring bits must be an integer in [1, 31], got {bits!r}")
    if spec.bits is not None and spec.bits != bits:
        raise CodecError(f"spec quantizes to {spec.bits} bits but the ring codec has bits={bits}")
    check_count(n_max, bits)


def check_count(count: int, bits: int) -> None:
    """Raise CodecError unless ``count`` levels of ``bits`` bits sum below 2^32 (no wrap)."""
    if not (isinstance(count, int) and count >= 1):
        raise CodecError(f"device count must be an integer >= 1, got {count!r}")
    if count * level_count(bits) >= RING:
        raise CodecError(
            f"{count} devices x (2^{bits} - 1) >= 2^32: the ring sum would wrap around; "
            f"use fewer bits or at most {(RING - 1) // level_count(bits)} devices"
        )


class RingCodec:
    """Encode updates into a shared ring layout and decode the modular sum of many of them.

    Parameters
    ----------
    spec : dense or ``randk`` spec, optional ``rot``, ``ef``/``noef``; no top-k, no blocks.
    shapes : tensor shapes of the update.
    clip : L2 norm the sent values are clipped to (fixes every device's range).
    bits : levels per coordinate are ``2**bits``.
    n_max : most devices whose vectors will be summed (checked against wrap-around).
    residual_path : error-feedback residual file (None: memory only).
    """

    def __init__(
        self,
        spec: CodecSpec,
        shapes: Sequence[Sequence[int]],
        clip: float,
        bits: int,
        n_max: int,
        residual_path: Path | None = None,
    ) -> None:
        _check_params(spec, clip, bits, n_max)
        self.spec, self.clip, self.bits, self.n_max = spec, float(clip), bits, n_max
        self.shapes = check_shapes(shapes)
        self.layout = sections(spec, self.shapes)
        self.length = sum(sec.width for sec in self.layout)
        self.bounds = self._bounds()
        self.feedback = ErrorFeedback(self.shapes, residual_path) if spec.error_feedback else None

    def _bounds(self) -> Array:
        if not self.spec.rotate:
            return np.full(self.length, self.clip)
        log_term = 2.0 * math.log(2.0 * self.length / DELTA)
        parts = [
            np.full(d, min(self.clip, self.clip * math.sqrt(log_term / d)))
            for sec in self.layout
            for d in chunk_sizes(sec.count)
        ]
        return np.concatenate(parts)

    def encode(self, delta: Sequence[Array], *, round_seed: int, rng_seed: int) -> RingUpdate:
        """Ring vector of ``delta`` (+ residual): select, clip, rotate, quantize to uint32.

        Parameters
        ----------
        delta : one float array per tensor.
        round_seed : the round's shared seed (index set and rotation, same on every device).
        rng_seed : this device's seed for stochastic rounding.
        """
        round_seed = check_seed("round_seed", round_seed)
        rng = np.random.default_rng(check_seed("rng_seed", rng_seed))
        flat = flatten(delta, self.shapes)
        corrected = self.feedback.correct(flat) if self.feedback else flat
        picked = [corrected[sec.offset : sec.offset + sec.size] for sec in self.layout]
        if self.spec.sparsifier is Sparsifier.RANDK:
            picked = [
                vec[random_indices(sec.size, sec.count, round_seed=round_seed, section=i)]
                for i, (sec, vec) in enumerate(zip(self.layout, picked, strict=True))
            ]
        sent = clip_l2(np.concatenate(picked), self.clip)
        parts, start = [], 0
        for i, sec in enumerate(self.layout):
            vec = sent[start : start + sec.count]
            start += sec.count
            parts.append(rotate(vec, round_seed=round_seed, section=i) if self.spec.rotate else vec)
        vector = stochastic_round(np.concatenate(parts), self.bounds, self.bits, rng)
        vector = vector.astype(np.uint32)
        decoded = self.decode_sum(vector, 1, round_seed=round_seed)
        if self.feedback:
            self.feedback.update(corrected, np.concatenate([d.ravel() for d in decoded]))
        return RingUpdate(vector, decoded)

    def decode_sum(self, ring_sum: Array, count: int, *, round_seed: int) -> list[Array]:
        """Sum of ``count`` devices' updates from the modular sum of their ring vectors.

        Parameters
        ----------
        ring_sum : uint32 vector of length ``self.length`` (sum mod 2^32, masks removed).
        count : number of devices in the sum.
        round_seed : the round's shared seed.

        Returns
        -------
        Summed float32 update per tensor (zeros off the random-k index set).
        """
        round_seed = check_seed("round_seed", round_seed)
        check_count(count, self.bits)
        levels = np.asarray(ring_sum)
        if levels.dtype != np.uint32 or levels.shape != (self.length,):
            raise CodecError(
                f"ring sum must be a uint32 vector of length {self.length}, "
                f"got {levels.dtype} {levels.shape}"
            )
        if int(levels.max(initial=0)) > count * level_count(self.bits):
            raise CodecError(
                f"ring sum entry exceeds {count} x (2^{self.bits} - 1): wrong count or masks "
                "did not cancel"
            )
        values = dequantize(levels, self.bounds, self.bits, count)
        flat = np.zeros(sum(sec.size for sec in self.layout))
        start = 0
        for i, sec in enumerate(self.layout):
            vec = values[start : start + sec.width]
            start += sec.width
            if self.spec.rotate:
                vec = unrotate(vec, sec.count, round_seed=round_seed, section=i)
            if self.spec.sparsifier is Sparsifier.DENSE:
                flat[sec.offset : sec.offset + sec.size] = vec
                continue
            if not self.spec.error_feedback:
                vec = vec * (sec.size / sec.count)
            idx = random_indices(sec.size, sec.count, round_seed=round_seed, section=i)
            flat[sec.offset + idx] = vec
        return unflatten(flat, self.shapes)
