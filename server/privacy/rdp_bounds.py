"""RDP curves of distributed discrete Gaussian and Skellam sums; Poisson-subsampling bound."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError

# Integer orders only: the general subsampling bound below is stated for them.
DISTRIBUTED_RDP_ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 192, 256)


def ddgauss_sum_rdp(
    orders: npt.ArrayLike, norm_bound: float, local_stddev: float, clients: int, dim: int
) -> Array:
    """RDP of the sum of `clients` discrete Gaussian shares N_Z(0, local_stddev^2) per coordinate.

    Kairouz, Liu, Steinke (2021), Theorem 1 / Proposition 14 (without the L1 term): for
    sensitivity `norm_bound` (L2, grid steps) and ``tau = 10 * sum_{k=1}^{n-1}
    exp(-2 pi^2 sigma^2 k / (k+1))``, order a has

        eps(a) = min(a D^2 / (2 n sigma^2) + tau * dim,
                     a/2 * (D / (sqrt(n) sigma) + tau sqrt(dim))^2)

    tau is the slack from a sum of discrete Gaussians not being a discrete Gaussian; it
    vanishes quickly as sigma grows (it is below 1e-300 for sigma >= 5).
    """
    _check(norm_bound, local_stddev, clients, dim)
    alpha = np.asarray(orders, dtype=np.float64)
    if local_stddev == 0:
        return np.full(alpha.shape, np.inf)
    k = np.arange(1, clients, dtype=np.float64)
    tau = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * local_stddev**2 * k / (k + 1.0))))
    ratio = norm_bound / (math.sqrt(clients) * local_stddev)
    additive = alpha * ratio**2 / 2.0 + tau * dim
    shifted = alpha / 2.0 * (ratio + tau * math.sqrt(dim)) ** 2
    return np.minimum(additive, shifted)


def skellam_sum_rdp(
    orders: npt.ArrayLike, norm_bound: float, local_stddev: float, clients: int, dim: int
) -> Array:
    """RDP of the sum of `clients` symmetric Skellam shares of variance local_stddev^2.

    Agarwal, Kairouz, Liu (2021), Theorem 3.5, with mu = n sigma^2 / 2 the Skellam
    parameter of the sum, L2 sensitivity D and L1 sensitivity D1 = min(sqrt(dim) D, D^2)
    (integer vectors)::

        eps(a) = a D^2 / (4 mu) + min((2a D^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))

    (2a in place of the paper's 2a - 1: slightly looser, never smaller).
    """
    _check(norm_bound, local_stddev, clients, dim)
    alpha = np.asarray(orders, dtype=np.float64)
    if local_stddev == 0:
        return np.full(alpha.shape, np.inf)
    mu = clients * local_stddev**2 / 2.0
    l1 = min(math.sqrt(dim) * norm_bound, norm_bound**2)
    second = np.minimum(
        (2.0 * alpha * norm_bound**2 + 6.0 * l1) / (16.0 * mu**2), 3.0 * l1 / (4.0 * mu)
    )
    bound: Array = alpha * norm_bound**2 / (4.0 * mu) + second
    return bound


def poisson_subsampled_rdp(
    orders: Sequence[int], rdp_at: Callable[[Array], Array], sampling_rate: float
) -> Array:
    """Upper bound on the RDP of any mechanism run on a Poisson sample (add/remove relation).

    Zhu and Wang (2019), "Poisson Subsampled Renyi Differential Privacy", general upper
    bound: for integer a >= 2 and sampling rate q,

        (a-1) eps'(a) <= log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
                             + 3 sum_{l=3}^{a} C(a,l) q^l (1-q)^(a-l) e^((l-1) eps(l))]

    Parameters
    ----------
    orders : integer orders >= 2 to evaluate.
    rdp_at : the unsampled mechanism's RDP curve, called on an array of integer orders.
    sampling_rate : q in (0, 1].

    Returns
    -------
    numpy.ndarray
        eps'(a) for each order, capped by the unsampled eps(a).
    """
    order_list = [int(order) for order in orders]
    if (
        not order_list
        or min(order_list) < 2
        or any(o != a for o, a in zip(order_list, orders, strict=True))
    ):
        raise PrivacyError(f"RDP orders must be integers >= 2, got {list(orders)}")
    if not 0 < sampling_rate <= 1:
        raise PrivacyError(f"sampling rate must be in (0, 1], got {sampling_rate}")
    # full[l] = eps(l) for l = 0..max order (entries 0 and 1 unused).
    full = np.concatenate([[np.nan, np.nan], rdp_at(np.arange(2, max(order_list) + 1))])
    unsampled = full[order_list]
    if sampling_rate == 1:
        return unsampled
    log_q = math.log(sampling_rate)
    log_1mq = math.log1p(-sampling_rate)
    out = np.empty(len(order_list), dtype=np.float64)
    for index, order in enumerate(order_list):
        levels = np.arange(3, order + 1)
        log_binom = np.array([_log_comb(order, int(level)) for level in levels])
        low = [
            (order - 1) * log_1mq + math.log(order * sampling_rate - sampling_rate + 1),
            _log_comb(order, 2) + 2 * log_q + (order - 2) * log_1mq + full[2],
        ]
        high = (
            math.log(3.0)
            + log_binom
            + levels * log_q
            + (order - levels) * log_1mq
            + (levels - 1) * full[levels]
        )
        total = float(np.logaddexp.reduce(np.concatenate([np.array(low), high])))
        out[index] = min(total / (order - 1), unsampled[index])
    return out


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _check(norm_bound: float, local_stddev: float, clients: int, dim: int) -> None:
    if not math.isfinite(norm_bound) or norm_bound <= 0:
        raise PrivacyError(f"sensitivity must be a finite number > 0, got {norm_bound}")
    if not math.isfinite(local_stddev) or local_stddev < 0:
        raise PrivacyError(f"local noise stddev must be a finite number >= 0, got {local_stddev}")
    if clients < 1 or dim < 1:
        raise PrivacyError(f"clients and dim must be >= 1, got {clients} and {dim}")
