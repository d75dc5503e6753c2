"""Adaptive quantile clipping on the server (Andrew et al. 2021, geometric update)."""

from __future__ import annotations

import math

import numpy as np

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy.sampling import noise_generator
from fedge.edge_client.privacy.spec import DPSpec


def update_noise_multiplier(noise_multiplier: float, bit_noise: float) -> float:
    """Noise multiplier left for the updates when the clipped count also takes noise.

    The round releases two Gaussian queries on the same devices: the update sum
    (sensitivity C, noise z_delta * C) and the centred count of ``norm <= C`` bits
    (sensitivity 1/2, noise `bit_noise`). Together they are one Gaussian mechanism with
    ``z^-2 = z_delta^-2 + (2 bit_noise)^-2``, so the accountant keeps using `noise_multiplier`
    and the updates get ``z_delta = (z^-2 - (2 bit_noise)^-2)^(-1/2)``.

    Raises
    ------
    PrivacyError
        If ``2 * bit_noise <= z`` (the count alone would spend the whole budget).
    """
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise PrivacyError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not math.isfinite(bit_noise) or bit_noise < 0:
        raise PrivacyError(f"bit noise must be a finite number >= 0, got {bit_noise}")
    if noise_multiplier == 0:
        return 0.0
    if 2 * bit_noise <= noise_multiplier:
        raise PrivacyError(
            f"bit noise {bit_noise} is too small for z={noise_multiplier}: need 2*bit_noise > z"
        )
    return float((noise_multiplier**-2 - (2 * bit_noise) ** -2) ** -0.5)


class AdaptiveClipper:
    """Server state of adaptive clipping: the clip norm C sent with each round's task.

    After a round, with b_i = 1 if device i's update norm was <= C::

        b_mean = (sum_i (b_i - 1/2) + N(0, bit_noise^2)) / expected_clients + 1/2
        C <- C * exp(-learning_rate * (b_mean - target_quantile))

    Centring the bits makes one device change the count by at most 1/2 and keeps the
    denominator fixed, as in DP-FedAvg.

    Parameters
    ----------
    initial_clip : C before the first round (> 0).
    target_quantile : fraction of devices whose update should fall under C, in (0, 1).
    learning_rate : eta_C (> 0).
    bit_noise : standard deviation of the count noise (>= 0).
    expected_clients : the fixed denominator (> 0).
    """

    def __init__(
        self,
        initial_clip: float,
        target_quantile: float,
        learning_rate: float,
        bit_noise: float,
        expected_clients: float,
    ) -> None:
        if not math.isfinite(initial_clip) or initial_clip <= 0:
            raise PrivacyError(f"initial clip must be a finite number > 0, got {initial_clip}")
        if not 0 < target_quantile < 1:
            raise PrivacyError(f"target quantile must be in (0, 1), got {target_quantile}")
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise PrivacyError(f"clip learning rate must be > 0, got {learning_rate}")
        if not math.isfinite(bit_noise) or bit_noise < 0:
            raise PrivacyError(f"bit noise must be a finite number >= 0, got {bit_noise}")
        if not math.isfinite(expected_clients) or expected_clients <= 0:
            raise PrivacyError(f"expected clients must be > 0, got {expected_clients}")
        self.clip = float(initial_clip)
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.bit_noise = float(bit_noise)
        self.expected_clients = float(expected_clients)
        self.last_fraction: float | None = None

    @classmethod
    def from_spec(
        cls, spec: DPSpec, expected_clients: float, clip: float | None = None
    ) -> AdaptiveClipper:
        """Clipper for an adaptive `spec`; `clip` resumes from a stored clip norm."""
        if spec.adaptive_quantile is None:
            raise PrivacyError("the DP spec has no adaptive=QUANTILE")
        return cls(
            initial_clip=spec.clip if clip is None else clip,
            target_quantile=spec.adaptive_quantile,
            learning_rate=spec.clip_learning_rate,
            bit_noise=spec.bit_noise_for(expected_clients),
            expected_clients=expected_clients,
        )

    def update(
        self, within_clip: int, reports: int, rng: np.random.Generator | None = None
    ) -> float:
        """Fold one round's bits into C and return the new clip norm.

        Parameters
        ----------
        within_clip : number of reporting devices whose bit was 1 (norm <= C).
        reports : number of devices that reported a bit this round.
        rng : numpy Generator; None uses OS-seeded randomness.
        """
        if isinstance(reports, bool) or not isinstance(reports, int) or reports < 0:
            raise PrivacyError(f"reports must be an integer >= 0, got {reports!r}")
        if isinstance(within_clip, bool) or not isinstance(within_clip, int):
            raise PrivacyError(f"within_clip must be an integer, got {within_clip!r}")
        if not 0 <= within_clip <= reports:
            raise PrivacyError(f"within_clip must be in [0, {reports}], got {within_clip}")
        noise = noise_generator(rng).normal(0.0, self.bit_noise) if self.bit_noise > 0 else 0.0
        centred = within_clip - reports / 2.0 + noise
        fraction = centred / self.expected_clients + 0.5
        self.last_fraction = fraction
        self.clip *= math.exp(-self.learning_rate * (fraction - self.target_quantile))
        return self.clip
