"""Privacy accountants: epsilon after each round, and when a budget stops the job."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.ddp_params import DistributedDPParams
from fedge.edge_client.privacy.spec import AccountingMethod, DistributedNoise, DPMode, DPSpec
from fedge.server.privacy.rdp_bounds import (
    DISTRIBUTED_RDP_ORDERS,
    ddgauss_sum_rdp,
    poisson_subsampled_rdp,
    skellam_sum_rdp,
)

# max_rounds_within never searches beyond this many rounds.
MAX_ROUNDS = 10_000_000
DEFAULT_PLD_DISCRETIZATION = 1e-4


class RoundAccountant(ABC):
    """Epsilon of a job that runs identical rounds; subclasses give epsilon for T rounds."""

    def __init__(self, sampling_rate: float, delta: float) -> None:
        if not math.isfinite(sampling_rate) or not 0 < sampling_rate <= 1:
            raise PrivacyError(f"sampling rate must be in (0, 1], got {sampling_rate}")
        if not math.isfinite(delta) or not 0 < delta < 1:
            raise PrivacyError(f"delta must be in (0, 1), got {delta}")
        self.sampling_rate = float(sampling_rate)
        self.delta = float(delta)
        self._rounds = 0
        self._cache: dict[int, float] = {0: 0.0}

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return self._rounds

    @property
    def epsilon(self) -> float:
        """Epsilon spent by the rounds accounted so far (at `delta`)."""
        return self.epsilon_after(self._rounds)

    def step(self, rounds: int = 1) -> float:
        """Account `rounds` more completed rounds; return the new epsilon."""
        _check_rounds(rounds)
        self._rounds += rounds
        return self.epsilon

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon after `rounds` rounds in total (inf if the noise multiplier is 0)."""
        _check_rounds(rounds)
        if rounds not in self._cache:
            self._cache[rounds] = float(self._compute_epsilon(rounds))
        return self._cache[rounds]

    def would_exceed(self, target_epsilon: float) -> bool:
        """True if running one more round would take epsilon above `target_epsilon`."""
        _check_target(target_epsilon)
        return self.epsilon_after(self._rounds + 1) > target_epsilon

    def max_rounds_within(self, target_epsilon: float) -> int:
        """Largest total number of rounds with epsilon <= `target_epsilon` (at most MAX_ROUNDS).

        Epsilon grows with the number of rounds, so this is a doubling search followed
        by bisection (about 2 log2(T) epsilon evaluations).
        """
        _check_target(target_epsilon)
        if self.epsilon_after(1) > target_epsilon:
            return 0
        low, high = 1, 2
        while high < MAX_ROUNDS and self.epsilon_after(high) <= target_epsilon:
            low, high = high, high * 2
        if high >= MAX_ROUNDS:
            if self.epsilon_after(MAX_ROUNDS) <= target_epsilon:
                return MAX_ROUNDS
            high = MAX_ROUNDS
        while high - low > 1:  # epsilon(low) <= target < epsilon(high)
            middle = (low + high) // 2
            if self.epsilon_after(middle) <= target_epsilon:
                low = middle
            else:
                high = middle
        return low

    @abstractmethod
    def _compute_epsilon(self, rounds: int) -> float:
        """Epsilon after `rounds` >= 1 rounds."""


class PrivacyAccountant(RoundAccountant):
    """Poisson-sampled Gaussian mechanism, accounted with dp-accounting (RDP or PLD).

    Each round samples each device independently with probability `sampling_rate`
    (q = clients_per_round / population) and releases the sum of clipped updates plus
    Gaussian noise of standard deviation `noise_multiplier * clip` (user-level,
    add/remove-one-device neighbouring relation).

    Parameters
    ----------
    noise_multiplier : z (>= 0; 0 means epsilon = inf after one round).
    sampling_rate : q in (0, 1].
    delta : target delta in (0, 1).
    method : "rdp" (Renyi DP, fast, slightly loose) or "pld" (privacy loss distributions,
        tighter, ~0.1-0.2 s per evaluation).
    pld_discretization : value discretization interval of the PLD (smaller: tighter, slower).
    """

    def __init__(
        self,
        noise_multiplier: float,
        sampling_rate: float,
        delta: float,
        method: str | AccountingMethod = AccountingMethod.RDP,
        pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    ) -> None:
        super().__init__(sampling_rate, delta)
        if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
            raise PrivacyError(
                f"noise multiplier must be a finite number >= 0, got {noise_multiplier}"
            )
        try:
            self.method = AccountingMethod(method)
        except ValueError:
            raise PrivacyError(
                f"accounting method must be 'rdp' or 'pld', got {method!r}"
            ) from None
        if not 0 < pld_discretization < 1:
            raise PrivacyError(f"PLD discretization must be in (0, 1), got {pld_discretization}")
        self.noise_multiplier = float(noise_multiplier)
        self.pld_discretization = pld_discretization

    @cached_property
    def _rdp_one_round(self) -> tuple[Array, Array]:
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(self._event())
        return np.asarray(accountant.orders), np.asarray(accountant.rdp)

    @cached_property
    def _pld_one_round(self) -> privacy_loss_distribution.PrivacyLossDistribution:
        return privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=self.noise_multiplier,
            sampling_prob=self.sampling_rate,
            value_discretization_interval=self.pld_discretization,
        )

    def _event(self) -> dp_accounting.DpEvent:
        return dp_accounting.PoissonSampledDpEvent(
            self.sampling_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )

    def _compute_epsilon(self, rounds: int) -> float:
        if self.noise_multiplier == 0:
            return math.inf
        if self.method is AccountingMethod.PLD:
            composed = self._pld_one_round.self_compose(rounds)
            return float(composed.get_epsilon_for_delta(self.delta))
        orders, rdp = self._rdp_one_round
        epsilon, _ = rdp_privacy_accountant.compute_epsilon(orders, rounds * rdp, self.delta)
        return float(epsilon)


class DistributedPrivacyAccountant(RoundAccountant):
    """Poisson-sampled sum of devices' discrete Gaussian or Skellam noise (distributed DP).

    Rigorous and conservative: the per-round RDP curve of the noisy integer sum (Kairouz et
    al. for the discrete Gaussian, including its tau slack; Agarwal et al. for Skellam) at
    the quantized sensitivity `params.norm_bound`, amplified by Poisson sampling with the
    general bound of Zhu and Wang (valid for any mechanism), composed over rounds and
    converted to (epsilon, delta) by dp-accounting's RDP conversion.

    Parameters
    ----------
    params : the distributed-DP parameters the devices use.
    sampling_rate : q in (0, 1].
    delta : target delta in (0, 1).
    min_clients : fewest devices whose noise is in a released sum (secure aggregation's
        threshold); None assumes all `params.clients` survive. Each device adds 1/clients
        of the variance, so fewer survivors mean less noise.
    """

    def __init__(
        self,
        params: DistributedDPParams,
        sampling_rate: float,
        delta: float,
        min_clients: int | None = None,
    ) -> None:
        super().__init__(sampling_rate, delta)
        survivors = params.clients if min_clients is None else min_clients
        if isinstance(survivors, bool) or not isinstance(survivors, int):
            raise PrivacyError(f"min_clients must be an integer, got {min_clients!r}")
        if not 1 <= survivors <= params.clients:
            raise PrivacyError(f"min_clients must be in [1, {params.clients}], got {min_clients}")
        self.params = params
        self.min_clients = survivors

    def round_rdp(self, orders: Array) -> Array:
        """RDP of one round's released sum before sampling, at integer `orders`."""
        curve = ddgauss_sum_rdp if self.params.noise is DistributedNoise.DGAUSS else skellam_sum_rdp
        return curve(
            orders,
            self.params.norm_bound,
            self.params.local_stddev,
            self.min_clients,
            self.params.padded_dim,
        )

    @cached_property
    def effective_noise_multiplier(self) -> float:
        """Largest Gaussian noise multiplier whose RDP dominates one round's at every order.

        For display next to the central z: min over orders of sqrt(a / (2 eps(a))).
        """
        orders = np.asarray(DISTRIBUTED_RDP_ORDERS, dtype=np.float64)
        rdp = self.round_rdp(orders)
        if not np.all(np.isfinite(rdp)):
            return 0.0
        return float(np.min(np.sqrt(orders / (2.0 * rdp))))

    @cached_property
    def _rdp_one_round(self) -> Array:
        return poisson_subsampled_rdp(DISTRIBUTED_RDP_ORDERS, self.round_rdp, self.sampling_rate)

    def _compute_epsilon(self, rounds: int) -> float:
        if self.params.local_stddev == 0:
            return math.inf
        epsilon, _ = rdp_privacy_accountant.compute_epsilon(
            DISTRIBUTED_RDP_ORDERS, rounds * self._rdp_one_round, self.delta
        )
        return float(epsilon)


def accountant_from_spec(
    spec: DPSpec,
    clients_per_round: float,
    population: int,
    distributed_params: DistributedDPParams | None = None,
    min_clients: int | None = None,
) -> RoundAccountant:
    """The accountant a job with `spec` needs.

    Parameters
    ----------
    spec : the job's DP spec.
    clients_per_round : expected number of devices sampled per round.
    population : number of devices that could be sampled (q = clients_per_round / population).
    distributed_params : required in distributed mode (the parameters sent to devices).
    min_clients : distributed mode: secure aggregation's survivor threshold.

    Raises
    ------
    PrivacyError
        If q is not in (0, 1], delta >= 1 / population (the guarantee would allow
        revealing a whole device's data), or distributed parameters are missing or do not
        match the spec.
    """
    if population < 1 or not 0 < clients_per_round <= population:
        raise PrivacyError(
            f"need 0 < clients_per_round <= population, got {clients_per_round} and {population}"
        )
    if spec.delta >= 1.0 / population:
        raise PrivacyError(
            f"delta={spec.delta} must be below 1/population = {1.0 / population:.3g}"
        )
    rate = clients_per_round / population
    if spec.mode is DPMode.CENTRAL:
        return PrivacyAccountant(spec.noise_multiplier, rate, spec.delta, spec.accounting)
    if distributed_params is None:
        raise PrivacyError("distributed DP accounting needs the distributed DP parameters")
    if (
        distributed_params.noise_multiplier != spec.noise_multiplier
        or distributed_params.clip != spec.clip
        or distributed_params.noise is not spec.noise
    ):
        raise PrivacyError("distributed DP parameters do not match the spec (z, clip or noise)")
    return DistributedPrivacyAccountant(distributed_params, rate, spec.delta, min_clients)


def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise PrivacyError(f"rounds must be an integer >= 0, got {rounds!r}")


def _check_target(target_epsilon: float) -> None:
    if not target_epsilon > 0:
        raise PrivacyError(f"target epsilon must be > 0, got {target_epsilon}")
