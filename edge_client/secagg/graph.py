"""Who shares with whom: seeded random Harary graphs and the (k, t) choice of SecAgg+."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from functools import lru_cache

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import canonical_bytes

GRAPH_DOMAIN = b"fedge/secagg/v1/graph"


def binomial_tails(n: int, p: float) -> list[float]:
    """``tails[m] = P[Binomial(n, p) >= m]`` for m = 0 ... n + 1 (log-space pmf, no overflow)."""
    if p <= 0.0:
        pmf = [1.0] + [0.0] * n
    elif p >= 1.0:
        pmf = [0.0] * n + [1.0]
    else:
        log_odds = math.log(p) - math.log1p(-p)
        log_pmf = n * math.log1p(-p)  # i = 0
        pmf = [math.exp(log_pmf)]
        for i in range(n):  # pmf(i + 1) = pmf(i) * (n - i) / (i + 1) * p / (1 - p)
            log_pmf += math.log((n - i) / (i + 1)) + log_odds
            pmf.append(math.exp(log_pmf))
    tails = [0.0] * (n + 2)
    for i in range(n, -1, -1):
        tails[i] = min(1.0, tails[i + 1] + pmf[i])
    return tails


@lru_cache(maxsize=1024)
def complete_graph_params(n: int, corrupt_fraction: float) -> tuple[int, int]:
    """(k, t) of classic SecAgg: every device shares with all n - 1 others.

    ``t = floor((k + c) / 2) + 1`` with ``c = floor(corrupt_fraction * n)`` corrupt devices,
    so that even an active server that tells different honest devices different stories
    cannot collect t shares of *both* secrets of any honest device (corrupt devices give
    both kinds, honest ones only one: reaching t twice needs k + c >= 2t).
    """
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 devices, got {n}")
    if not 0.0 <= corrupt_fraction < 1.0:
        raise SecAggError(f"corrupt_fraction must be in [0, 1), got {corrupt_fraction}")
    k = n - 1
    corrupt = min(k, math.floor(corrupt_fraction * n))
    t = (k + corrupt) // 2 + 1
    if t > k:
        raise SecAggError(
            f"no safe threshold: {corrupt} corrupt devices among {n} leave no t <= {k} "
            "with 2t > k + corrupt"
        )
    return k, t


def _harary_threshold(
    n: int, k: int, dropout_rate: float, corrupt_fraction: float, sec: float, cor: float
) -> int | None:
    """Smallest t meeting the three SecAgg+ conditions for degree k, or None."""
    q = dropout_rate + corrupt_fraction
    # (1) Connectivity: the honest survivors of a relabelled Harary graph H(k, n) fall
    # apart only if two disjoint windows of k/2 consecutive ring positions are all dropped
    # or corrupt: P <= n^2/2 * q^k.
    if q > 0.0 and (2 * math.log(n) - math.log(2) + k * math.log(q)) > -sec * math.log(2):
        return None
    bound_sec = 2.0**-sec / n
    bound_cor = 2.0**-cor / n
    corrupt_tail = binomial_tails(k, corrupt_fraction)
    survive_tail = binomial_tails(k, 1.0 - dropout_rate)
    for t in range(k // 2 + 1, k + 1):
        # (2) Privacy against an active server: 2t > k + (corrupt neighbours), per device.
        if corrupt_tail[2 * t - k] > bound_sec:
            continue
        # (3) Correctness: at least t of the k neighbours survive to answer Unmask. The
        # smallest secure t is also the most robust one, so stop at the first secure t.
        return t if 1.0 - survive_tail[t] <= bound_cor else None
    return None


@lru_cache(maxsize=1024)
def choose_graph_params(
    n: int,
    dropout_rate: float,
    corrupt_fraction: float,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> tuple[int, int]:
    """Pick the SecAgg+ degree k and threshold t for n devices (after Bell et al. 2020).

    The smallest even k < n - 1 is returned for which some t satisfies, with every
    device independently dropped with probability ``dropout_rate`` and corrupt with
    probability ``corrupt_fraction`` (the random relabelling of the graph makes
    positions independent of both):

    1. connectivity of the honest survivors: ``n^2/2 * (dropout + corrupt)^k <= 2^-sec``;
    2. privacy: ``n * P[Bin(k, corrupt) >= 2t - k] <= 2^-sec``;
    3. correctness: ``n * P[Bin(k, 1 - dropout) < t] <= 2^-cor``.

    If no such k exists the complete graph (classic SecAgg) is returned with
    :func:`complete_graph_params`; its correctness is then best effort.

    Returns
    -------
    tuple[int, int]
        ``(k, t)``: each device shares its secrets t-out-of-k with k neighbours.
    """
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 devices, got {n}")
    if not 0.0 <= dropout_rate < 1.0:
        raise SecAggError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if not 0.0 <= corrupt_fraction < 1.0:
        raise SecAggError(f"corrupt_fraction must be in [0, 1), got {corrupt_fraction}")
    if security_bits < 1 or correctness_bits < 1:
        raise SecAggError("security_bits and correctness_bits must be positive")
    for k in range(2, n - 1, 2):
        t = _harary_threshold(n, k, dropout_rate, corrupt_fraction, security_bits, correctness_bits)
        if t is not None:
            return k, t
    return complete_graph_params(n, corrupt_fraction)


def ring_order(device_ids: Sequence[str], seed: bytes) -> list[str]:
    """The seeded random relabelling: devices sorted by SHA-256(domain, seed, id)."""
    return sorted(
        device_ids,
        key=lambda d: hashlib.sha256(canonical_bytes(GRAPH_DOMAIN, seed, d)).digest(),
    )


def _check_degree(n: int, k: int) -> None:
    if not 1 <= k <= n - 1:
        raise SecAggError(f"degree k={k} impossible with {n} devices")
    if k < n - 1 and k % 2:
        raise SecAggError(f"a Harary graph below the complete graph needs an even k, got {k}")


def neighbourhoods(device_ids: Sequence[str], k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """Neighbours of every device in the seeded Harary graph H(k, n).

    For even k < n - 1 device at ring position i is joined to positions i +- 1 ... i +- k/2;
    k = n - 1 is the complete graph.
    """
    n = len(device_ids)
    _check_degree(n, k)
    if k == n - 1:
        everyone = frozenset(device_ids)
        return {d: everyone - {d} for d in device_ids}
    ring = ring_order(device_ids, seed)
    half = k // 2
    return {
        d: frozenset(ring[(i + off) % n] for off in range(-half, half + 1) if off)
        for i, d in enumerate(ring)
    }


def neighbours_of(device_ids: Sequence[str], k: int, seed: bytes, device_id: str) -> frozenset[str]:
    """Neighbours of one device (what a device computes for itself to check the roster)."""
    n = len(device_ids)
    _check_degree(n, k)
    if device_id not in device_ids:
        raise SecAggError(f"{device_id!r} is not in the roster")
    if k == n - 1:
        return frozenset(device_ids) - {device_id}
    ring = ring_order(device_ids, seed)
    i = ring.index(device_id)
    return frozenset(ring[(i + off) % n] for off in range(-(k // 2), k // 2 + 1) if off)
