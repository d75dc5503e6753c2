"""Distributed DP: parameter selection, wrap-around checks, encode -> ring sum -> decode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy import (
    DistributedDPParams,
    DistributedNoise,
    check_wraparound,
    clip_update,
    encode_distributed,
    select_distributed_params,
    wraparound_sigmas,
)
from fedge.edge_client.privacy.rounding import conditional_round, rounded_norm_bound
from fedge.server.privacy import decode_noisy_sum

SHAPES = [(30, 50), (500,), (1000,)]  # 3,000 values -> 4,096 after padding
DIM = 3000


def _updates(clients: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(clients):
        # norms between ~0.3 and ~3: some are clipped at 1.0, some are not
        scale = (0.3 + 2.7 * index / max(clients - 1, 1)) / math.sqrt(DIM)
        out.append([rng.normal(0, scale, shape).astype(np.float32) for shape in SHAPES])
    return out


def _ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])  # uint32: additions wrap modulo 2**32 like secure agg
    for vector in vectors:
        total += vector
    return total


def _clipped_sum(updates: list[list[np.ndarray]], clip: float) -> np.ndarray:
    flat = [
        np.concatenate([a.ravel() for a in clip_update(u, clip).arrays]).astype(np.float64)
        for u in updates
    ]
    return np.sum(flat, axis=0)


def test_selected_scale_meets_the_wrap_bound_exactly() -> None:
    params = select_distributed_params(clip=1.0, clients=50, dim=DIM, noise_multiplier=1.0, bits=20)
    assert params.padded_dim == 4096
    assert wraparound_sigmas(params, 50) == pytest.approx(params.wrap_sigmas, rel=1e-9)
    assert params.wrap_sigmas == pytest.approx(math.sqrt(2 * math.log(2 * 4096 / 1e-6)))
    # the devices' noise adds up to the central noise z * clip (in grid steps)
    central = params.local_stddev * math.sqrt(50)
    assert central == pytest.approx(1.0 * 1.0 * params.scale)
    check_wraparound(params, 50)
    with pytest.raises(PrivacyError, match="may wrap around"):
        check_wraparound(params, 60)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"bits": 8, "clients": 2000}, "rounding alone would wrap"),
        ({"bits": 12, "clients": 100, "dim": 1_000_000}, "too coarse"),
        ({"clip": 0.0}, "clip must be"),
        ({"clients": 0}, "clients must be"),
        ({"dim": 0}, "dim must be"),
        ({"noise_multiplier": -1.0}, "noise multiplier"),
        ({"bits": 40}, "bits must be"),
        ({"beta": 1.0}, "beta must be"),
        ({"wrap_probability": 0.0}, "wrap probability"),
    ],
)
def test_selection_refuses_bad_settings(kwargs: dict[str, object], fragment: str) -> None:
    settings: dict[str, object] = {
        "clip": 1.0,
        "clients": 10,
        "dim": DIM,
        "noise_multiplier": 1.0,
    }
    settings.update(kwargs)
    with pytest.raises(PrivacyError) as info:
        select_distributed_params(**settings)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_wide_rings_cap_the_noise_for_sampler_accuracy() -> None:
    params = select_distributed_params(clip=1.0, clients=50, dim=DIM, noise_multiplier=1.0)
    assert params.local_stddev == pytest.approx(2.0**20)
    assert wraparound_sigmas(params, 50) > params.wrap_sigmas


def test_fewer_bits_mean_coarser_grid_but_still_valid() -> None:
    wide = select_distributed_params(clip=1.0, clients=100, dim=DIM, noise_multiplier=1.0)
    narrow = select_distributed_params(
        clip=1.0, clients=100, dim=DIM, noise_multiplier=1.0, bits=16
    )
    assert narrow.scale < wide.scale
    assert narrow.norm_bound / (narrow.scale * narrow.clip) > wide.norm_bound / (
        wide.scale * wide.clip
    )


def test_conditional_rounding_respects_the_norm_bound() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=4096)
    x *= 40.0 / np.linalg.norm(x)
    bound = rounded_norm_bound(40.0, 4096, math.exp(-0.5))
    assert bound < 40.0 + 64.0  # conditioning beats the worst case
    for _ in range(20):
        rounded = conditional_round(x, bound, rng)
        assert np.linalg.norm(rounded) <= bound
        assert np.all(np.abs(rounded - x) < 1)
    with pytest.raises(PrivacyError, match="could not meet"):
        conditional_round(x, 1.0, rng)


def test_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(6)
    x = np.full(200_000, 0.3)
    assert conditional_round(x, 1e9, rng).mean() == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("bits", [32, 16])
def test_noiseless_round_trip_recovers_the_clipped_sum(bits: int) -> None:
    clients = 20
    params = select_distributed_params(
        clip=1.0, clients=clients, dim=DIM, noise_multiplier=0.0, bits=bits
    )
    updates = _updates(clients, seed=7)
    rng = np.random.default_rng(8)
    vectors = [encode_distributed(u, params, rotation_seed=99, rng=rng) for u in updates]
    assert all(v.dtype == np.uint32 and v.size == 4096 for v in vectors)
    assert all(int(v.max()) < params.modulus for v in vectors)
    decoded = decode_noisy_sum(_ring_sum(vectors), params, rotation_seed=99, shapes=SHAPES)
    assert [a.shape for a in decoded] == SHAPES
    flat = np.concatenate([a.ravel() for a in decoded]).astype(np.float64)
    truth = _clipped_sum(updates, 1.0)
    # rounding error per coordinate is ~ sqrt(clients / 4) grid steps
    tolerance = 6 * math.sqrt(clients / 4) / params.scale + 1e-6
    assert np.max(np.abs(flat - truth)) < tolerance


@pytest.mark.parametrize("noise", [DistributedNoise.DGAUSS, DistributedNoise.SKELLAM])
def test_noise_of_the_decoded_sum_is_central_equivalent(noise: DistributedNoise) -> None:
    clients, z, clip = 16, 0.5, 1.0
    params = select_distributed_params(
        clip=clip, clients=clients, dim=DIM, noise_multiplier=z, noise=noise
    )
    updates = _updates(clients, seed=9)
    rng = np.random.default_rng(10)
    vectors = [encode_distributed(u, params, rotation_seed=3, rng=rng) for u in updates]
    decoded = decode_noisy_sum(_ring_sum(vectors), params, rotation_seed=3, shapes=SHAPES)
    error = np.concatenate([a.ravel() for a in decoded]) - _clipped_sum(updates, clip)
    assert error.std() == pytest.approx(z * clip, rel=0.05)
    assert abs(error.mean()) < 5 * z * clip / math.sqrt(DIM)


def test_wrong_rotation_seed_garbles_the_sum() -> None:
    params = select_distributed_params(clip=1.0, clients=4, dim=DIM, noise_multiplier=0.0)
    updates = _updates(4, seed=11)
    vectors = [encode_distributed(u, params, rotation_seed=1) for u in updates]
    decoded = decode_noisy_sum(_ring_sum(vectors), params, rotation_seed=2, shapes=SHAPES)
    flat = np.concatenate([a.ravel() for a in decoded])
    assert np.max(np.abs(flat - _clipped_sum(updates, 1.0))) > 0.01


def test_params_dict_round_trip_and_validation() -> None:
    params = select_distributed_params(clip=0.5, clients=30, dim=DIM, noise_multiplier=1.2)
    data = params.to_dict()
    assert data["noise"] == "dgauss"
    assert DistributedDPParams.from_dict(data) == params
    for broken, fragment in [
        ({k: v for k, v in data.items() if k != "scale"}, "missing ['scale']"),
        ({**data, "extra": 1}, "unknown ['extra']"),
        ({**data, "noise": "laplace"}, "unknown noise"),
        ({**data, "bits": 16.0}, "bits must be an integer"),
        ({**data, "scale": "big"}, "scale must be a number"),
        ({**data, "norm_bound": data["norm_bound"] / 2}, "below the scaled clip"),
        ({**data, "bits": 12}, "may wrap around"),
    ]:
        with pytest.raises(PrivacyError) as info:
            DistributedDPParams.from_dict(broken)
        assert fragment in str(info.value)
    with pytest.raises(PrivacyError, match="must be a dict"):
        DistributedDPParams.from_dict([1, 2])  # type: ignore[arg-type]


def test_shape_mismatches_raise() -> None:
    params = select_distributed_params(clip=1.0, clients=4, dim=DIM, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="expect 3000"):
        encode_distributed([np.zeros(10, np.float32)], params, rotation_seed=1)
    ring = np.zeros(params.padded_dim, np.uint32)
    with pytest.raises(PrivacyError, match="expect 3000"):
        decode_noisy_sum(ring, params, rotation_seed=1, shapes=[(10,)])
    with pytest.raises(PrivacyError, match="expected \\(4096,\\)"):
        decode_noisy_sum(ring[:100], params, rotation_seed=1, shapes=SHAPES)
    with pytest.raises(PrivacyError, match="integer type"):
        decode_noisy_sum(ring.astype(np.float32), params, rotation_seed=1, shapes=SHAPES)
