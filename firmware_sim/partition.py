"""Split a labelled data set over devices: IID, Dirichlet label skew, shards, quantity skew."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from fedge.edge_client.errors import ConfigError, DataError

Seed = int | Sequence[int]


class LabelSkew(Enum):
    """How labels are spread over devices."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"


class SizeDistribution(Enum):
    """Distribution of the relative device sizes under quantity skew."""

    LOGNORMAL = "lognormal"
    POWERLAW = "powerlaw"


@dataclass(frozen=True)
class QuantitySkew:
    """Unequal device sizes: weights drawn from ``distribution`` with shape ``param``.

    ``lognormal``: weight ~ LogNormal(0, param) (param is sigma; larger = more unequal).
    ``powerlaw``: weight ~ Pareto(x_m=1, shape=param) (smaller shape = heavier tail).
    """

    distribution: SizeDistribution
    param: float


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition spec (see :func:`parse_partition_spec` for the grammar)."""

    skew: LabelSkew
    alpha: float | None = None
    shards: int | None = None
    quantity: QuantitySkew | None = None

    def __str__(self) -> str:
        if self.skew is LabelSkew.DIRICHLET:
            base = f"dirichlet:{self.alpha:g}"
        elif self.skew is LabelSkew.SHARDS:
            base = f"shards:{self.shards}"
        else:
            base = "iid"
        if self.quantity is None:
            return base
        q = self.quantity
        return f"{base}+qskew:{q.distribution.value}:{q.param:g}"


def _positive_float(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"partition spec {spec!r}: {what} must be a number, got {text!r}"
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(
            f"partition spec {spec!r}: {what} must be a finite number > 0, got {text!r}"
        )
    return value


def _parse_qskew(part: str, spec: str) -> QuantitySkew:
    fields = part.split(":")
    if len(fields) == 2:
        return QuantitySkew(SizeDistribution.LOGNORMAL, _positive_float(fields[1], "qskew", spec))
    if len(fields) == 3:
        try:
            dist = SizeDistribution(fields[1])
        except ValueError:
            raise ConfigError(
                f"partition spec {spec!r}: qskew distribution must be lognormal or powerlaw, "
                f"got {fields[1]!r}"
            ) from None
        return QuantitySkew(dist, _positive_float(fields[2], "qskew parameter", spec))
    raise ConfigError(
        f"partition spec {spec!r}: write qskew:SIGMA, qskew:lognormal:SIGMA or qskew:powerlaw:SHAPE"
    )


def parse_partition_spec(text: str) -> PartitionSpec:
    """Parse ``iid | dirichlet:ALPHA | shards:K``, optionally followed by ``+qskew:...``.

    Grammar (case-insensitive, spaces ignored)::

        spec  := label [ "+" qskew ]
        label := "iid" | "dirichlet:" ALPHA | "shards:" K
        qskew := "qskew:" SIGMA | "qskew:lognormal:" SIGMA | "qskew:powerlaw:" SHAPE

    ALPHA, SIGMA and SHAPE are finite numbers > 0, K an integer >= 1.

    Parameters
    ----------
    text : str
        The spec, e.g. ``"dirichlet:0.5+qskew:1.0"``.

    Returns
    -------
    PartitionSpec

    Raises
    ------
    ConfigError
        If the spec does not follow the grammar.
    """
    if not isinstance(text, str):
        raise ConfigError(f"partition spec must be a string, got {type(text).__name__}")
    spec = "".join(text.split()).lower()
    parts = spec.split("+")
    if not parts[0] or len(parts) > 2:
        raise ConfigError(
            f"partition spec {text!r}: expected iid|dirichlet:ALPHA|shards:K "
            "optionally followed by +qskew:..."
        )
    quantity = None
    if len(parts) == 2:
        if not parts[1].startswith("qskew:"):
            raise ConfigError(f"partition spec {text!r}: unknown option {parts[1]!r} (only qskew)")
        quantity = _parse_qskew(parts[1], text)
    head, _, arg = parts[0].partition(":")
    if head == "iid" and not arg and ":" not in parts[0]:
        return PartitionSpec(LabelSkew.IID, quantity=quantity)
    if head == "dirichlet" and arg:
        return PartitionSpec(
            LabelSkew.DIRICHLET, alpha=_positive_float(arg, "ALPHA", text), quantity=quantity
        )
    if head == "shards" and arg:
        if not (arg.isascii() and arg.isdigit()) or int(arg) < 1:
            raise ConfigError(f"partition spec {text!r}: K must be an integer >= 1, got {arg!r}")
        return PartitionSpec(LabelSkew.SHARDS, shards=int(arg), quantity=quantity)
    raise ConfigError(
        f"partition spec {text!r}: expected iid, dirichlet:ALPHA or shards:K, got {parts[0]!r}"
    )


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (largest-remainder method).

    Parameters
    ----------
    total : int
        Non-negative integer to split.
    weights : np.ndarray
        Non-negative weights with a positive sum.

    Returns
    -------
    np.ndarray
        int64 counts, one per weight, summing to ``total``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or w.ndim != 1 or w.size == 0 or np.any(w < 0) or not w.sum() > 0:
        raise ConfigError("apportion needs total >= 0 and non-negative weights with a positive sum")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise DataError("labels must be non-negative class ids")
    return arr.astype(np.int64)


def _device_weights(
    n_devices: int, quantity: QuantitySkew | None, rng: np.random.Generator
) -> np.ndarray:
    if quantity is None:
        return np.ones(n_devices)
    if quantity.distribution is SizeDistribution.LOGNORMAL:
        return rng.lognormal(0.0, quantity.param, size=n_devices)
    return rng.pareto(quantity.param, size=n_devices) + 1.0


def _iid(n_samples: int, sizes: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n_samples)
    return np.split(order, np.cumsum(sizes)[:-1])


def _fill_counts(
    target: int, wanted: np.ndarray, supply: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``target`` samples by class from ``wanted`` without exceeding ``supply``.

    Each pass exhausts at least one class or meets the target, so it ends within C+1 passes.
    """
    counts = np.zeros_like(supply)
    for _ in range(supply.size + 1):
        need = target - int(counts.sum())
        if need == 0:
            break
        left = supply - counts
        w = np.where(left > 0, wanted, 0.0)
        if not w.sum() > 0:
            w = left.astype(np.float64)
        counts += np.minimum(rng.multinomial(need, w / w.sum()), left)
    return counts


def _dirichlet(
    labels: np.ndarray, sizes: np.ndarray, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    class_counts = np.bincount(labels)
    present = class_counts > 0
    prior = class_counts[present] / labels.size
    concentration = alpha * present.sum() * prior
    supply = class_counts[present].copy()
    per_device = np.zeros((sizes.size, supply.size), dtype=np.int64)
    for dev in rng.permutation(sizes.size):
        wanted = rng.dirichlet(concentration)
        per_device[dev] = _fill_counts(int(sizes[dev]), wanted, supply, rng)
        supply -= per_device[dev]
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.flatnonzero(present)]
    offsets = np.zeros(len(pools), dtype=np.int64)
    parts: list[np.ndarray] = []
    for dev in range(sizes.size):
        chunks = []
        for k, pool in enumerate(pools):
            take = per_device[dev, k]
            chunks.append(pool[offsets[k] : offsets[k] + take])
            offsets[k] += take
        parts.append(np.concatenate(chunks))
    return parts


def _shards(
    labels: np.ndarray, n_devices: int, k: int, weights: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    classes = rng.permutation(np.flatnonzero(np.bincount(labels)))
    n_slots = n_devices * k
    if n_slots >= classes.size:
        groups = [[c] for c in classes]
    else:  # fewer slots than classes: whole classes are grouped so every label is still dealt
        groups = [list(classes[g::n_slots]) for g in range(n_slots)]
    units = [rng.permutation(np.flatnonzero(np.isin(labels, g))) for g in groups]
    unit_sizes = np.array([u.size for u in units], dtype=np.float64)
    slots_per_unit = 1 + apportion(n_slots - len(units), unit_sizes)
    slot_owner = rng.permutation(np.repeat(np.arange(n_devices), k))
    parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
    first = 0
    for unit, n_unit_slots in zip(units, slots_per_unit, strict=True):
        owners = slot_owner[first : first + n_unit_slots]
        first += n_unit_slots
        piece_sizes = apportion(unit.size, weights[owners])
        for owner, piece in zip(owners, np.split(unit, np.cumsum(piece_sizes)[:-1]), strict=True):
            parts[owner].append(piece)
    return [np.concatenate(p) for p in parts]


def _top_up(parts: list[np.ndarray], labels: np.ndarray, min_size: int) -> list[np.ndarray]:
    """Move samples from the largest devices to devices below ``min_size``.

    Moved samples prefer labels the receiving device already holds.
    """
    sizes = np.array([p.size for p in parts])
    for dev in np.flatnonzero(sizes < min_size):
        while parts[dev].size < min_size:
            donor = int(np.argmax([p.size for p in parts]))
            give = min(min_size - parts[dev].size, parts[donor].size - min_size)
            same = np.isin(labels[parts[donor]], labels[parts[dev]])
            order = np.argsort(~same, kind="stable")
            moved = parts[donor][order[:give]]
            parts[donor] = parts[donor][order[give:]]
            parts[dev] = np.concatenate([parts[dev], moved])
    return parts


def partition(
    labels: np.ndarray,
    n_devices: int,
    spec: PartitionSpec,
    seed: Seed,
    *,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` over ``n_devices`` devices.

    Every index lands on exactly one device, each device gets at least ``min_size`` samples,
    and the result depends only on (labels, n_devices, spec, seed).

    Parameters
    ----------
    labels : np.ndarray
        1-D non-negative integer class ids, one per sample.
    n_devices : int
        Number of devices, 1 <= n_devices <= len(labels) // min_size.
    spec : PartitionSpec
        From :func:`parse_partition_spec`.
    seed : int or sequence of int
        Seed of the numpy Generator.
    min_size : int
        Smallest number of samples a device may hold (>= 1).

    Returns
    -------
    list of np.ndarray
        One int64 index array per device.

    Raises
    ------
    ConfigError
        If ``n_devices`` or ``min_size`` is out of range (n_devices * min_size > len(labels)).
    DataError
        If ``labels`` is not a non-empty 1-D array of non-negative integers.
    """
    y = _check_labels(labels)
    if min_size < 1:
        raise ConfigError(f"min_size must be >= 1, got {min_size}")
    if n_devices < 1 or n_devices * min_size > y.size:
        raise ConfigError(
            f"cannot give {n_devices} devices at least {min_size} samples each from "
            f"{y.size} samples: use 1 <= devices <= {y.size // min_size}"
        )
    rng = np.random.default_rng(seed)
    weights = _device_weights(n_devices, spec.quantity, rng)
    if spec.skew is LabelSkew.SHARDS:
        assert spec.shards is not None
        parts = _top_up(_shards(y, n_devices, spec.shards, weights, rng), y, min_size)
    else:
        sizes = min_size + apportion(y.size - n_devices * min_size, weights)
        if spec.skew is LabelSkew.DIRICHLET:
            assert spec.alpha is not None
            parts = _dirichlet(y, sizes, spec.alpha, rng)
        else:
            parts = _iid(y.size, sizes, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def split_local(
    indices: np.ndarray, test_fraction: float, seed: Seed
) -> tuple[np.ndarray, np.ndarray]:
    """Split one device's indices into a local train and test part.

    The test part has ``round(n * test_fraction)`` samples, at least 1 when ``test_fraction > 0``
    and n >= 2, and never all of them: a device always keeps at least one training sample.

    Parameters
    ----------
    indices : np.ndarray
        The device's sample indices.
    test_fraction : float
        In [0, 1).
    seed : int or sequence of int
        Seed of the shuffle (e.g. ``(run_seed, device_number)``).

    Returns
    -------
    (np.ndarray, np.ndarray)
        Sorted train and test indices, disjoint, together equal to ``indices``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    idx = np.asarray(indices, dtype=np.int64)
    n = idx.size
    n_test = min(max(round(n * test_fraction), 1 if test_fraction > 0 else 0), max(n - 1, 0))
    shuffled = np.random.default_rng(seed).permutation(idx)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def label_counts(parts: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Return a (devices, classes) matrix of how many samples of each class a device holds."""
    y = _check_labels(labels)
    n_classes = int(y.max()) + 1
    return np.stack([np.bincount(y[p], minlength=n_classes) for p in parts])


def label_skew(parts: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each device's label distribution and the global one.

    0 means every device sees the global mix; values near 1 mean devices see disjoint labels.
    Empty devices are left out.

    Parameters
    ----------
    parts : sequence of np.ndarray
        Index arrays, as returned by :func:`partition`.
    labels : np.ndarray
        Class id of every sample.

    Returns
    -------
    float
        In [0, 1].
    """
    counts = label_counts(parts, labels).astype(np.float64)
    sizes = counts.sum(axis=1)
    counts = counts[sizes > 0]
    if counts.shape[0] == 0:
        raise DataError("label_skew needs at least one non-empty device")
    local = counts / counts.sum(axis=1, keepdims=True)
    overall = counts.sum(axis=0) / counts.sum()
    return float(np.mean(0.5 * np.abs(local - overall).sum(axis=1)))
