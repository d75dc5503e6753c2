"""Differential privacy of one job on the server: clip bound, noise, adaptive clip, accountant, budget."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

import numpy as np

from edge_client.errors import PrivacyError
from edge_client.privacy import DPMode, DPSpec, clip_update, parse_dp_spec
from server.privacy import (
    AdaptiveClipper,
    RoundAccountant,
    accountant_from_spec,
    central_dp_mean,
    update_noise_multiplier,
)

log = logging.getLogger("fedge.server.dp")


class CentralDP:
    """Trusted-server DP-FedAvg: uniform weights, server-side re-clipping, Gaussian noise."""

    def __init__(self, spec: DPSpec, expected_clients: int):
        if spec.mode is not DPMode.CENTRAL:
            raise PrivacyError("CentralDP needs a central:... spec")
        self.spec = spec
        self.expected_clients = expected_clients
        self.clipper = AdaptiveClipper.from_spec(spec, expected_clients) if spec.adaptive else None
        self.accountant: RoundAccountant | None = None
        self._rng = np.random.default_rng(secrets.randbits(128))

    @property
    def clip(self) -> float:
        """The clip norm devices use this round."""
        return self.clipper.clip if self.clipper else self.spec.clip

    @property
    def update_noise_multiplier(self) -> float:
        """z of the update noise (reduced when part of the budget goes to the clip bits)."""
        if self.clipper is None:
            return self.spec.noise_multiplier
        return update_noise_multiplier(self.spec.noise_multiplier, self.clipper.bit_noise)

    def task_settings(self) -> dict[str, object]:
        """What devices need: clip locally to this norm and report whether they were under it."""
        return {"mode": "central", "clip": self.clip}

    def bound(self, delta: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Re-clip a decoded update on the server: the sensitivity bound holds whatever a device sent."""
        return list(clip_update(list(delta), self.clip).arrays)

    def private_mean(self, clipped_sum: Sequence[np.ndarray]) -> list[np.ndarray]:
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

    def ensure_accountant(self, population: int, rounds_done: int) -> RoundAccountant:
        """Create the accountant once the population is known (replaying committed rounds)."""
        if self.accountant is None:
            self.accountant = accountant_from_spec(
                self.spec, self.expected_clients, max(population, self.expected_clients)
            )
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


def central_dp_for(spec_text: str | None, expected_clients: int) -> CentralDP | None:
    """The controller of a job's DP setting (None without DP); distributed mode lives in secagg."""
    if not spec_text:
        return None
    spec = parse_dp_spec(spec_text)
    if spec.mode is DPMode.CENTRAL:
        return CentralDP(spec, expected_clients)
    return None
