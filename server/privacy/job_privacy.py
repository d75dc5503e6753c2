"""Differential privacy of one job on the server: clip bound, noise, adaptive clip, accountant.

Every job has a `JobPrivacy`: `NoPrivacy` without DP, `CentralDP` (trusted server) or
`DistributedDP` (devices noise their updates under secure aggregation). The round loop and
the aggregations call the same methods on each; the modes differ only in here.
"""

from __future__ import annotations

import logging
import random
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ConfigError, PrivacyError
from fedge.edge_client.privacy import (
    DistributedDPParams,
    DPMode,
    DPSpec,
    clip_update,
    format_dp_spec,
    parse_dp_spec,
    select_distributed_params,
)
from fedge.edge_client.protocol.messages import DPTask
from fedge.server.job import JobConfig
from fedge.server.privacy.accountant import RoundAccountant, accountant_from_spec
from fedge.server.privacy.adaptive import AdaptiveClipper, update_noise_multiplier
from fedge.server.privacy.central import central_dp_mean
from fedge.server.privacy.distributed import decode_noisy_sum

log = logging.getLogger("fedge.server.dp")


class JobPrivacy:
    """What a job's privacy decides; these defaults are a job without DP (`NoPrivacy`)."""

    def dp_task(self) -> DPTask | None:
        """What devices need to bound (and noise) their updates (None: nothing)."""
        return None

    def weight_cap(self, max_example_weight: int) -> int:
        """The largest weight one device's update may carry in the mean."""
        return max_example_weight

    def sampling_rng(self, seeded: random.Random) -> random.Random:
        """The RNG that picks a round's devices among those waiting (the job's seeded one)."""
        return seeded

    @property
    def wakes_by_group(self) -> bool:
        """Whether round-opens may go to a few wake groups instead of the whole fleet."""
        return True

    def restore(self, committed: Sequence[dict[str, Any]]) -> None:
        """Pick up what adapts across rounds from the committed rounds' rows."""

    def stop_reason(self, population: Callable[[], int], rounds_done: int) -> str | None:
        """Why the job must stop before its next round (None: it may go on)."""
        return None

    def account_round(self, within_clip: int, reports: int) -> dict[str, float]:
        """Account a round about to commit; the fields its row stores (dp_clip, epsilon)."""
        return {}


class NoPrivacy(JobPrivacy):
    """A job without differential privacy."""


class AccountedPrivacy(JobPrivacy, ABC):
    """What every DP mode shares: the job's spec, its accountant and the budget stop."""

    spec: DPSpec
    expected_clients: int
    accountant: RoundAccountant | None

    @property
    def clip(self) -> float:
        """The clip norm devices use this round."""
        return self.spec.clip

    def weight_cap(self, max_example_weight: int) -> int:
        return 1

    def sampling_rng(self, seeded: random.Random) -> random.Random:
        # A predictable seed would void privacy amplification: OS randomness.
        return secrets.SystemRandom()

    @property
    def wakes_by_group(self) -> bool:
        # Waking by group would correlate which devices can be sampled.
        return False

    @abstractmethod
    def _new_accountant(self, population: int) -> RoundAccountant:
        """The accountant of this mode for a population of `population` devices."""

    def ensure_accountant(self, population: int, rounds_done: int) -> RoundAccountant:
        """Create the accountant once the population is known (replaying committed rounds)."""
        if self.accountant is None:
            self.accountant = self._new_accountant(max(population, self.expected_clients))
            if rounds_done:
                self.accountant.step(rounds_done)
        return self.accountant

    def account(self) -> float:
        """Step the accountant for a committed round; returns epsilon so far."""
        if self.accountant is None:
            raise PrivacyError("the accountant was not created before the first round")
        return self.accountant.step()

    def budget_exhausted(self) -> str | None:
        """Why the job must stop before the next round (None: it may go on)."""
        target = self.spec.target_epsilon
        if target is None or self.accountant is None:
            return None
        if self.accountant.would_exceed(target):
            return (
                f"privacy budget reached: epsilon {self.accountant.epsilon:.3f} now, the next "
                f"round would exceed the target {target}"
            )
        return None

    def stop_reason(self, population: Callable[[], int], rounds_done: int) -> str | None:
        if self.accountant is None:
            self.ensure_accountant(population(), rounds_done)
        return self.budget_exhausted()

    def account_round(self, within_clip: int, reports: int) -> dict[str, float]:
        fields = {"dp_clip": self.clip, "epsilon": self.account()}
        self.after_round(within_clip, reports)
        return fields

    def after_round(self, within_clip: int, reports: int) -> None:
        """Adapt what adapts after a round (nothing by default)."""


class CentralDP(AccountedPrivacy):
    """Trusted-server DP-FedAvg: uniform weights, server-side re-clipping, Gaussian noise."""

    def __init__(self, spec: DPSpec, expected_clients: int):
        if spec.mode is not DPMode.CENTRAL:
            raise PrivacyError("CentralDP needs a central:... spec")
        self.spec = spec
        self.expected_clients = expected_clients
        self.clipper = AdaptiveClipper.from_spec(spec, expected_clients) if spec.adaptive else None
        self.accountant = None
        self._rng = np.random.default_rng(secrets.randbits(128))

    @property
    def clip(self) -> float:
        return self.clipper.clip if self.clipper else self.spec.clip

    @property
    def update_noise_multiplier(self) -> float:
        """z of the update noise (reduced when part of the budget goes to the clip bits)."""
        if self.clipper is None:
            return self.spec.noise_multiplier
        return update_noise_multiplier(self.spec.noise_multiplier, self.clipper.bit_noise)

    def dp_task(self) -> DPTask:
        """Devices clip locally to this norm and report whether they were under it."""
        return DPTask(mode="central", clip=self.clip)

    def restore(self, committed: Sequence[dict[str, Any]]) -> None:
        clips = [r["dp_clip"] for r in committed if r["dp_clip"] is not None]
        if self.clipper is not None and clips:
            self.clipper.clip = clips[-1]

    def bound(self, delta: Sequence[Array]) -> list[Array]:
        """Re-clip a decoded update on the server: the sensitivity bound holds whatever a device sent."""
        return list(clip_update(list(delta), self.clip).arrays)

    def private_mean(self, clipped_sum: Sequence[Array]) -> list[Array]:
        """(sum + N(0, (zC)^2)) / expected clients."""
        noisy = central_dp_mean(
            list(clipped_sum),
            self.clip,
            self.update_noise_multiplier,
            self.expected_clients,
            self._rng,
        )
        return [np.asarray(a, np.float32) for a in noisy]

    def after_round(self, within_clip: int, reports: int) -> None:
        """Adapt the clip norm from this round's (noised) bits."""
        if self.clipper is not None:
            old = self.clipper.clip
            self.clipper.update(within_clip, reports, self._rng)
            log.info("adaptive clip: %.4g -> %.4g", old, self.clipper.clip)

    def _new_accountant(self, population: int) -> RoundAccountant:
        return accountant_from_spec(self.spec, self.expected_clients, population)


class DistributedDP(AccountedPrivacy):
    """Distributed DP under secure aggregation: devices add integer noise, the server sees a sum.

    The noise of the sum has standard deviation z * clip when `expected_clients` devices
    take part; each device adds 1/expected_clients of the variance. Up to `max_clients`
    (the over-selected cohort) may end up in the sum, so the ring is sized for them. Secure
    aggregation refuses to reveal a sum of fewer than `min_clients` devices, and the
    accountant assumes exactly that many (the least noise a released sum can carry).
    No adaptive clipping: it would need each device's clip bit in the clear.
    """

    def __init__(
        self,
        spec: DPSpec,
        *,
        expected_clients: int,
        max_clients: int,
        min_clients: int,
        dim: int,
    ):
        if spec.mode is not DPMode.DISTRIBUTED:
            raise PrivacyError("DistributedDP needs a distributed:... spec")
        if not 1 <= min_clients <= expected_clients:
            raise PrivacyError(
                f"min_clients must be in [1, {expected_clients}] (expected clients), "
                f"got {min_clients}"
            )
        self.spec = spec
        self.expected_clients = expected_clients
        self.min_clients = min_clients
        self.params: DistributedDPParams = select_distributed_params(
            spec.clip,
            expected_clients,
            dim,
            spec.noise_multiplier,
            bits=spec.bits,
            noise=spec.noise,
            beta=spec.beta,
            max_clients=max_clients,
        )
        self.accountant = None

    def dp_task(self) -> DPTask:
        """The exact parameters (the rotation seed is the round seed)."""
        return DPTask(mode="distributed", clip=self.clip, params=self.params)

    def decode_mean(
        self, ring_sum: Array, rotation_seed: int, shapes: Sequence[tuple[int, ...]]
    ) -> list[Array]:
        """Decode the securely aggregated ring sum; divide by the expected clients."""
        noisy_sum = decode_noisy_sum(ring_sum, self.params, rotation_seed, shapes)
        return [(s / np.float32(self.expected_clients)).astype(np.float32) for s in noisy_sum]

    def _new_accountant(self, population: int) -> RoundAccountant:
        return accountant_from_spec(
            self.spec,
            self.expected_clients,
            population,
            distributed_params=self.params,
            min_clients=self.min_clients,
        )


def privacy_for_job(job: JobConfig, dim: int) -> JobPrivacy:
    """The privacy of `job` for an update of `dim` values (`NoPrivacy` without DP).

    Distributed DP splits the noise over the round's target reports, sizes the ring for the
    devices a round selects, and accounts with the fewest devices a released sum may hold:
    the round's minimum reports, or secure aggregation's own minimum if that is larger.
    """
    sel = job.selection
    return job_privacy_for(
        job.dp,
        expected_clients=sel.target_reports,
        max_clients=sel.selected_per_round,
        min_clients=max(sel.min_reports, job.secagg.min_clients if job.secagg else 1),
        dim=dim,
    )


def job_privacy_for(
    spec: DPSpec | str | None,
    *,
    expected_clients: int,
    max_clients: int,
    min_clients: int,
    dim: int,
) -> JobPrivacy:
    """The privacy controller of a job (`NoPrivacy` without a spec).

    Raises
    ------
    ConfigError
        If distributed parameters cannot be chosen (ring too small for the cohort).
    """
    if spec is None or spec == "":
        return NoPrivacy()
    parsed = parse_dp_spec(spec) if isinstance(spec, str) else spec
    if parsed.mode is DPMode.CENTRAL:
        return CentralDP(parsed, expected_clients)
    try:
        return DistributedDP(
            parsed,
            expected_clients=expected_clients,
            max_clients=max(max_clients, expected_clients),
            min_clients=min(min_clients, expected_clients),
            dim=dim,
        )
    except PrivacyError as exc:
        raise ConfigError(f"job.dp {format_dp_spec(parsed)!r}: {exc}") from exc
