"""What one client of the exploration sends: coordinates, quantized values, bases, factors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedge.edge_client.codec.pipeline import unflatten
from fedge.edge_client.codec.quantize import dequantize, stochastic_round
from fedge.tools.bench._sparsify_federation import Federation
from fedge.tools.bench._sparsify_schemes import Scheme, kernel_ranks


def quantize(values: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """The codec's stochastic quantizer with one scale (float values when ``bits`` is 0)."""
    if not bits or values.size == 0:
        return values
    scale = np.array(np.max(np.abs(values)))
    return dequantize(stochastic_round(values, scale, bits, rng), scale, bits)


def top_coordinates(vec: np.ndarray, frac: float, block: int = 1) -> np.ndarray:
    """Indices of the largest ``frac`` of ``vec`` (by block L2 norm when ``block`` > 1)."""
    nb = -(-vec.size // block)
    padded = np.zeros(nb * block)
    padded[: vec.size] = vec
    norms = np.linalg.norm(padded.reshape(nb, block), axis=1)
    keep = max(1, round(frac * vec.size / block))
    blocks = np.argpartition(-norms, keep - 1)[:keep]
    idx = (blocks[:, None] * block + np.arange(block)).ravel()
    return idx[idx < vec.size]


@dataclass
class RoundContext:
    """What the server fixes for a round: shared coordinates, the last global update, the
    top-k density and, for ``subspace``, the shared bases (tensor index -> orthonormal columns)."""

    shared: np.ndarray | None
    previous_update: np.ndarray
    density: float
    bases: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """What the server decodes from one client (dense vector) and its estimated payload bits."""

    sent: np.ndarray
    bits: float


def value_bits(count: int, bits: int) -> float:
    """Bits of ``count`` values at ``bits`` each (float32 when 0), with one float16 scale."""
    return count * (bits or 32) + (16 if bits and count else 0)


def index_bits(n: int, k: int) -> float:
    """Bits of ``k`` Elias-Fano coded indices out of ``n``."""
    return k * (2 + math.log2(n / k)) if k else 0.0


def as_matrix(part: np.ndarray) -> np.ndarray:
    """A kernel as (fan-in, outputs)."""
    return part.reshape(-1, part.shape[-1])


def subspace_bases(
    ranks: dict[int, int],
    shapes: tuple[tuple[int, ...], ...],
    updates: Sequence[np.ndarray],
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """Per kernel, the leading left singular vectors of its ``updates``, topped up at random."""
    bases = {}
    for i, rank in ranks.items():
        fan_in = math.prod(shapes[i][:-1])
        lead = np.zeros((fan_in, 0))
        if updates:
            stacked = np.concatenate([as_matrix(unflatten(u, shapes)[i]) for u in updates], axis=1)
            lead = np.linalg.svd(stacked, full_matrices=False)[0][:, :rank]
        if lead.shape[1] < rank:
            filler = rng.standard_normal((fan_in, rank - lead.shape[1]))
            lead = np.linalg.qr(np.concatenate([lead, filler], axis=1))[0]
        bases[i] = lead
    return bases


def subspace_part(
    target: np.ndarray,
    bases: dict[int, np.ndarray],
    shapes: tuple[tuple[int, ...], ...],
    bits: int,
    rng: np.random.Generator,
) -> Message:
    """The kernels of ``target`` coded as (quantized) coefficients in the shared bases."""
    parts = unflatten(target, shapes)
    coded = [np.zeros_like(p) for p in parts]
    cost = 0.0
    for i, basis in bases.items():
        coeffs = quantize(basis.T @ as_matrix(parts[i]), bits, rng)
        coded[i] = (basis @ coeffs).reshape(parts[i].shape)
        cost += value_bits(coeffs.size, bits)
    return Message(np.concatenate([c.ravel() for c in coded]), cost)


def lowrank_part(
    target: np.ndarray,
    ranks: dict[int, int],
    shapes: tuple[tuple[int, ...], ...],
    bits: int,
    rng: np.random.Generator,
) -> Message:
    """The kernels of ``target`` coded as their own (quantized) truncated-SVD factors."""
    parts = unflatten(target, shapes)
    coded = [np.zeros_like(p) for p in parts]
    cost = 0.0
    for i, rank in ranks.items():
        u, s, vt = np.linalg.svd(as_matrix(parts[i]), full_matrices=False)
        root = np.sqrt(s[:rank])
        left, right = u[:, :rank] * root, vt[:rank].T * root
        left, right = ([quantize(col, bits, rng) for col in m.T] for m in (left, right))
        coded[i] = (np.stack(left, 1) @ np.stack(right, 1).T).reshape(parts[i].shape)
        cost += sum(value_bits(col.size, bits) for col in (*left, *right))
    return Message(np.concatenate([c.ravel() for c in coded]), cost)


def local_delta(
    fed: Federation, scheme: Scheme, ctx: RoundContext, weights: np.ndarray, device: int, seed: int
) -> np.ndarray:
    """A client's local training (``submodel`` trains only the shared coordinates,
    ``lookahead`` starts from the prediction)."""
    if scheme.kind == "lookahead":
        return fed.train(weights + scheme.beta * ctx.previous_update, device, seed)
    if scheme.kind != "submodel":
        return fed.train(weights, device, seed)
    assert ctx.shared is not None
    free = np.zeros_like(weights)
    free[ctx.shared] = 1.0
    return fed.train(weights, device, seed, free)


def client_message(
    fed: Federation,
    scheme: Scheme,
    ctx: RoundContext,
    weights: np.ndarray,
    delta: np.ndarray,
    device: int,
    residual: np.ndarray,
    seed: int,
) -> Message:
    """What one client sends for ``delta``; updates its error-feedback ``residual`` in place."""
    if scheme.kind == "dense":
        return Message(delta, value_bits(delta.size, 0))
    rng = np.random.default_rng(seed)
    predicted = 0.0 if scheme.kind == "lookahead" else scheme.beta * ctx.previous_update
    target = delta - predicted + scheme.gamma * residual
    if ctx.bases:
        base = subspace_part(target, ctx.bases, fed.shapes, scheme.bits, rng)
    elif scheme.kind == "lowrank":
        base = lowrank_part(target, kernel_ranks(scheme, fed.shapes), fed.shapes, scheme.bits, rng)
    else:
        base = Message(np.zeros_like(target), 0.0)
    sent, cost = base.sent.copy(), base.bits
    if ctx.shared is not None:
        idx = ctx.shared
    elif scheme.kind == "refit":
        idx = top_coordinates(target, ctx.density)
        free = np.zeros_like(weights)
        free[idx] = 1.0
        target = fed.train(weights, device, seed + 7, free) + scheme.gamma * residual
    else:
        idx = top_coordinates(target - sent, ctx.density, scheme.block)
    if ctx.shared is None:
        blocks = len(np.unique(idx // scheme.block))
        cost += index_bits(-(-target.size // scheme.block), blocks)
    sent[idx] += quantize((target - sent)[idx], scheme.bits, rng)
    residual[:] = target - sent
    return Message(sent, cost + value_bits(len(idx), scheme.bits))
