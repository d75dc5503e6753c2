"""The exploration script's building blocks: scheme parsing and coordinate choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.tools.bench._sparsify_coding import (
    index_bits,
    lowrank_part,
    subspace_bases,
    subspace_part,
    top_coordinates,
    value_bits,
)
from fedge.tools.bench._sparsify_schemes import (
    DEFAULT_SCHEMES,
    Scheme,
    kernel_ranks,
    parse_scheme,
    round_density,
)


def test_scheme_text_parses_to_the_scheme() -> None:
    assert parse_scheme("topk:0.01:4:gamma=0.5") == Scheme("topk", 0.01, 4, gamma=0.5)
    assert parse_scheme("block:0.07:2:block=10") == Scheme("block", 0.07, 2, block=10)
    assert parse_scheme("dense") == Scheme("dense")
    assert len({s.label for s in DEFAULT_SCHEMES}) == len(DEFAULT_SCHEMES)


@settings(max_examples=50, deadline=None)
@given(size=st.integers(20, 400), frac=st.floats(0.01, 0.5), seed=st.integers(0, 1000))
def test_top_coordinates_keep_the_largest(size: int, frac: float, seed: int) -> None:
    vec = np.random.default_rng(seed).normal(size=size)
    idx = top_coordinates(vec, frac)
    assert len(idx) == len(set(idx.tolist())) == max(1, round(frac * size))
    assert np.abs(vec[idx]).min() >= np.abs(np.delete(vec, idx)).max(initial=0.0)


@pytest.mark.parametrize("size", [100, 105])
def test_block_top_coordinates_take_whole_blocks(size: int) -> None:
    vec = np.zeros(size)
    vec[30:40] = 1.0  # block 3 is the only one with mass
    vec[size - 1] = 5.0  # the short last block
    idx = top_coordinates(vec, frac=0.2, block=10)
    blocks = set((idx // 10).tolist())
    assert blocks >= {3, (size - 1) // 10} and len(blocks) == 2
    assert idx.max() < size


CNN_FMNIST_SHAPES = ((3, 3, 1, 8), (8,), (3, 3, 8, 16), (16,), (400, 10), (10,))


def test_subspace_scheme_parses_with_integer_ranks() -> None:
    scheme = parse_scheme("subspace:0.0076:4:rank=10:rank2=4:oracle=1")
    assert scheme == Scheme("subspace", 0.0076, 4, rank=10, rank2=4, oracle=1)
    assert isinstance(scheme.rank, int) and scheme.label == "subspace 0.0076 q4 rank=10 rank2=4 oracle=1"


def test_warmup_density_starts_high_and_decays_to_frac() -> None:
    scheme = Scheme("topk", 0.01, 4, warmup=0.1, tau=3.0)
    densities = [round_density(scheme, r) for r in range(40)]
    assert densities[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(densities, densities[1:], strict=False))
    assert densities[-1] == pytest.approx(0.01, abs=1e-6)
    assert round_density(Scheme("topk", 0.01, 4), 0) == 0.01


def test_kernel_ranks_cover_the_classifier_and_wide_enough_kernels() -> None:
    assert kernel_ranks(Scheme("subspace", rank=10, rank2=4), CNN_FMNIST_SHAPES) == {4: 10, 2: 4}
    assert kernel_ranks(Scheme("subspace", rank=10), CNN_FMNIST_SHAPES) == {4: 10}
    assert kernel_ranks(Scheme("topk", 0.01), CNN_FMNIST_SHAPES) == {}


def test_subspace_bases_span_the_recent_updates_and_code_them_exactly() -> None:
    rng = np.random.default_rng(3)
    size = sum(int(np.prod(s)) for s in CNN_FMNIST_SHAPES)
    update = rng.normal(size=size)
    ranks = {4: 10, 2: 4}
    bases = subspace_bases(ranks, CNN_FMNIST_SHAPES, [update], rng)
    assert {i: b.shape for i, b in bases.items()} == {4: (400, 10), 2: (72, 4)}
    for basis in bases.values():
        np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-5)
    # The classifier kernel (400 x 10) has rank 10: its own basis codes it without loss.
    coded = subspace_part(update, bases, CNN_FMNIST_SHAPES, 0, rng)
    kernel = slice(size - 4010, size - 10)
    np.testing.assert_allclose(coded.sent[kernel], update[kernel], atol=1e-5)
    assert coded.bits == (10 * 10 + 4 * 16) * 32
    assert not coded.sent[:72].any() and not coded.sent[-10:].any()  # conv1 and biases: not coded


def test_subspace_bases_without_history_are_random_orthonormal() -> None:
    bases = subspace_bases({4: 10}, CNN_FMNIST_SHAPES, [], np.random.default_rng(0))
    np.testing.assert_allclose(bases[4].T @ bases[4], np.eye(10), atol=1e-5)


def test_payload_bit_estimates() -> None:
    assert value_bits(100, 4) == 100 * 4 + 16
    assert value_bits(100, 0) == 3200
    assert value_bits(0, 4) == 0
    assert index_bits(5258, 53) == pytest.approx(53 * (2 + np.log2(5258 / 53)))
    assert index_bits(5258, 0) == 0


def test_lowrank_codes_a_rank_one_kernel_exactly_and_counts_its_factors() -> None:
    rng = np.random.default_rng(5)
    size = sum(int(np.prod(s)) for s in CNN_FMNIST_SHAPES)
    target = rng.normal(size=size)
    kernel = slice(size - 4010, size - 10)
    target[kernel] = np.outer(rng.normal(size=400), rng.normal(size=10)).ravel()
    ranks = kernel_ranks(Scheme("lowrank", rank=1), CNN_FMNIST_SHAPES)
    coded = lowrank_part(target, ranks, CNN_FMNIST_SHAPES, 0, rng)
    np.testing.assert_allclose(coded.sent[kernel], target[kernel], atol=1e-5)
    assert not coded.sent[:kernel.start].any() and not coded.sent[kernel.stop:].any()
    assert coded.bits == (400 + 10) * 32
    # Quantized: one scale per factor column, and the kernel only approximately.
    quantized = lowrank_part(target, ranks, CNN_FMNIST_SHAPES, 2, rng)
    assert quantized.bits == (400 + 10) * 2 + 2 * 16
    assert not np.allclose(quantized.sent[kernel], target[kernel])
