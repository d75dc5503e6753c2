"""Server-side differential privacy: central noise, adaptive clipping, decoding, accounting."""

from fedge.server.privacy.accountant import (
    MAX_ROUNDS,
    DistributedPrivacyAccountant,
    PrivacyAccountant,
    RoundAccountant,
    accountant_from_spec,
)
from fedge.server.privacy.adaptive import AdaptiveClipper, update_noise_multiplier
from fedge.server.privacy.central import add_gaussian_noise, central_dp_mean
from fedge.server.privacy.distributed import decode_noisy_sum

__all__ = [
    "MAX_ROUNDS",
    "AdaptiveClipper",
    "DistributedPrivacyAccountant",
    "PrivacyAccountant",
    "RoundAccountant",
    "accountant_from_spec",
    "add_gaussian_noise",
    "central_dp_mean",
    "decode_noisy_sum",
    "update_noise_multiplier",
]
