"""Tests of firmware_sim.partition: coverage, determinism, label and quantity skew, local splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from fedge.edge_client.errors import ConfigError, DataError
from fedge.firmware_sim.partition import (
    LabelSkew,
    SizeDistribution,
    apportion,
    label_counts,
    label_skew,
    parse_partition_spec,
    partition,
    split_local,
)

DIGITS = load_digits().target

SPECS = st.sampled_from(
    [
        "iid",
        "dirichlet:0.05",
        "dirichlet:1",
        "dirichlet:50",
        "shards:1",
        "shards:2",
        "shards:5",
        "iid+qskew:1.5",
        "dirichlet:0.3+qskew:1.0",
        "shards:2+qskew:powerlaw:1.2",
        "iid+qskew:lognormal:3",
    ]
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, int, str, int, int]:
    n_classes = draw(st.integers(1, 12))
    labels = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=300)))
    min_size = draw(st.integers(1, 4))
    n_devices = draw(st.integers(1, max(1, labels.size // min_size)))
    if n_devices * min_size > labels.size:
        min_size = 1
    return labels, n_devices, draw(SPECS), draw(st.integers(0, 2**32 - 1)), min_size


@settings(max_examples=150, deadline=None)
@given(problems())
def test_partition_is_disjoint_covering_and_large_enough(
    problem: tuple[np.ndarray, int, str, int, int],
) -> None:
    labels, n_devices, spec, seed, min_size = problem
    parts = partition(labels, n_devices, parse_partition_spec(spec), seed, min_size=min_size)
    assert len(parts) == n_devices
    joined = np.concatenate(parts)
    assert joined.size == labels.size
    assert np.array_equal(np.sort(joined), np.arange(labels.size))
    assert min(p.size for p in parts) >= min_size


@settings(max_examples=40, deadline=None)
@given(problems())
def test_partition_is_deterministic_for_a_seed(
    problem: tuple[np.ndarray, int, str, int, int],
) -> None:
    labels, n_devices, spec, seed, min_size = problem
    parsed = parse_partition_spec(spec)
    first = partition(labels, n_devices, parsed, seed, min_size=min_size)
    again = partition(labels, n_devices, parsed, seed, min_size=min_size)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_different_seeds_give_different_partitions() -> None:
    spec = parse_partition_spec("dirichlet:0.5")
    a = partition(DIGITS, 20, spec, 1)
    b = partition(DIGITS, 20, spec, 2)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_skew(alpha: float) -> float:
        spec = parse_partition_spec(f"dirichlet:{alpha}")
        return float(
            np.mean([label_skew(partition(DIGITS, 20, spec, s), DIGITS) for s in range(5)])
        )

    low, mid, high = mean_skew(0.1), mean_skew(1.0), mean_skew(100.0)
    assert low > mid > high


def test_iid_has_low_skew_and_shards_high_skew() -> None:
    iid = label_skew(partition(DIGITS, 10, parse_partition_spec("iid"), 0), DIGITS)
    shards = label_skew(partition(DIGITS, 10, parse_partition_spec("shards:1"), 0), DIGITS)
    assert iid < 0.1
    assert shards > 0.8


@pytest.mark.parametrize(("n_devices", "k"), [(5, 2), (10, 1), (10, 2), (37, 3), (100, 2)])
def test_shards_give_each_device_at_most_k_labels(n_devices: int, k: int) -> None:
    parts = partition(DIGITS, n_devices, parse_partition_spec(f"shards:{k}"), 7)
    counts = label_counts(parts, DIGITS)
    assert max(int(np.count_nonzero(row)) for row in counts) <= k
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 0.25 * np.mean(sizes)


def test_shards_with_fewer_slots_than_classes_still_cover_every_label() -> None:
    parts = partition(DIGITS, 2, parse_partition_spec("shards:2"), 3)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(DIGITS.size))
    assert all(int(np.count_nonzero(row)) >= 2 for row in label_counts(parts, DIGITS))


@pytest.mark.parametrize("base", ["iid", "dirichlet:1", "shards:2"])
def test_quantity_skew_produces_unequal_sizes(base: str) -> None:
    plain = [p.size for p in partition(DIGITS, 30, parse_partition_spec(base), 4)]
    skewed = [p.size for p in partition(DIGITS, 30, parse_partition_spec(f"{base}+qskew:1.5"), 4)]
    assert float(np.std(skewed)) > 3 * max(float(np.std(plain)), 1.0)
    assert max(skewed) > 3 * min(skewed)


def test_powerlaw_quantity_skew_has_a_heavy_tail() -> None:
    sizes = np.array(
        [p.size for p in partition(DIGITS, 100, parse_partition_spec("iid+qskew:powerlaw:1.1"), 0)]
    )
    assert sizes.max() > 5 * np.median(sizes)


def test_too_many_devices_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 2 samples"):
        partition(np.zeros(10, dtype=int), 6, parse_partition_spec("iid"), 0, min_size=2)
    with pytest.raises(ConfigError, match="devices"):
        partition(np.zeros(10, dtype=int), 0, parse_partition_spec("iid"), 0)
    with pytest.raises(ConfigError, match="min_size"):
        partition(np.zeros(10, dtype=int), 2, parse_partition_spec("iid"), 0, min_size=0)


@pytest.mark.parametrize(
    "labels",
    [np.zeros((3, 2), dtype=int), np.array([0.0, 1.0]), np.array([0, -1]), np.array([], dtype=int)],
)
def test_bad_labels_are_a_data_error(labels: np.ndarray) -> None:
    with pytest.raises(DataError):
        partition(labels, 1, parse_partition_spec("iid"), 0)


def test_parse_spec_fields() -> None:
    spec = parse_partition_spec(" Dirichlet:0.5 + qskew:powerlaw:1.2 ")
    assert spec.skew is LabelSkew.DIRICHLET and spec.alpha == 0.5
    assert spec.quantity is not None
    assert spec.quantity.distribution is SizeDistribution.POWERLAW and spec.quantity.param == 1.2
    shards = parse_partition_spec("shards:3+qskew:1")
    assert shards.shards == 3 and shards.quantity is not None
    assert shards.quantity.distribution is SizeDistribution.LOGNORMAL
    assert parse_partition_spec("iid").quantity is None


@given(SPECS)
def test_spec_string_round_trips(text: str) -> None:
    spec = parse_partition_spec(text)
    assert parse_partition_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "random",
        "iid:3",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:abc",
        "shards:0",
        "shards:1.5",
        "shards:x",
        "iid+",
        "iid+foo:1",
        "iid+qskew",
        "iid+qskew:0",
        "iid+qskew:gamma:1",
        "iid+qskew:1+qskew:2",
        "+qskew:1",
    ],
)
def test_bad_specs_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="partition spec"):
        parse_partition_spec(text)


def test_split_local_is_disjoint_complete_and_deterministic() -> None:
    idx = np.arange(100, 150)
    train, test = split_local(idx, 0.2, (9, 3))
    assert test.size == 10 and train.size == 40
    assert np.array_equal(np.sort(np.concatenate([train, test])), idx)
    again = split_local(idx, 0.2, (9, 3))
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    other = split_local(idx, 0.2, (9, 4))
    assert not np.array_equal(test, other[1])


def test_split_local_keeps_a_training_sample() -> None:
    train, test = split_local(np.array([5]), 0.5, 0)
    assert train.tolist() == [5] and test.size == 0
    train, test = split_local(np.array([5, 6]), 0.01, 0)
    assert train.size == 1 and test.size == 1
    train, test = split_local(np.arange(10), 0.0, 0)
    assert train.size == 10 and test.size == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_local_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        split_local(np.arange(10), fraction, 0)


def test_label_skew_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert label_skew([np.array([0, 1]), np.array([2, 3])], labels) == pytest.approx(0.5)
    assert label_skew([np.array([0, 2]), np.array([1, 3])], labels) == pytest.approx(0.0)


@given(st.integers(0, 10_000), st.lists(st.floats(0, 100), min_size=1, max_size=20))
def test_apportion_sums_to_total_and_stays_close(total: int, weights: list[float]) -> None:
    w = np.array(weights)
    if not w.sum() > 0:
        with pytest.raises(ConfigError):
            apportion(total, w)
        return
    counts = apportion(total, w)
    assert int(counts.sum()) == total
    assert np.all(np.abs(counts - total * w / w.sum()) < 1.0 + 1e-9)
