"""The device's fleet policy: the floors a task must meet, set when the device is provisioned.

The server chooses a round's secure-aggregation and DP parameters, so a server that lies
could lower them. A device therefore holds its own floors (``device.toml`` ``[policy]``,
written by `fedge provision`) and refuses a task below them, naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from fedge.edge_client.protocol.task import DPTask, SecAggTask, Task
from fedge.edge_client.tables import Settings, check


@dataclass(frozen=True)
class FleetPolicy(Settings):
    """Floors a device requires of every task (the defaults are the fleet's safe defaults).

    Attributes
    ----------
    min_cohort
        The fewest devices a secure sum may hold (the task's ``min_clients`` may not be lower).
    min_corrupt_fraction
        The share of devices assumed to collude with the server when (k, t) are chosen.
    min_security_bits
        -log2 of the failure probability of privacy the graph parameters must reach.
    min_noise_multiplier
        Distributed DP: the noise multiplier any released sum carries at the least (the
        noise of ``min_clients`` devices), relative to the clip norm.
    max_sample_rate
        Sampled DP rounds: the largest probability with which this device joins a round.
    """

    SECTION: ClassVar[str] = "policy"
    min_cohort: int = 3
    min_corrupt_fraction: float = 0.0
    min_security_bits: int = 40
    min_noise_multiplier: float = 0.0
    max_sample_rate: float = 1.0

    def check(self) -> None:
        check(self.min_cohort >= 2, "policy.min_cohort must be >= 2")
        check(
            0.0 <= self.min_corrupt_fraction < 1.0, "policy.min_corrupt_fraction must be in [0, 1)"
        )
        check(1 <= self.min_security_bits <= 256, "policy.min_security_bits must be in [1, 256]")
        check(self.min_noise_multiplier >= 0.0, "policy.min_noise_multiplier must be >= 0")
        check(0.0 < self.max_sample_rate <= 1.0, "policy.max_sample_rate must be in (0, 1]")

    def refusal(self, task: Task) -> str | None:
        """Why ``task`` is below this policy (None when it meets every floor)."""
        if task.secagg is not None:
            why = self._secagg_refusal(task.secagg)
            if why is not None:
                return why
        if task.dp is not None and task.dp.params is not None:
            return self._noise_refusal(task.dp, task.secagg)
        return None

    def _secagg_refusal(self, secagg: SecAggTask) -> str | None:
        config = secagg.config
        if config.min_clients < self.min_cohort:
            return f"secure aggregation min_clients {config.min_clients} is below the policy's min_cohort {self.min_cohort}"
        if config.corrupt_fraction < self.min_corrupt_fraction:
            return (
                f"secure aggregation corrupt_fraction {config.corrupt_fraction} is below the "
                f"policy's min_corrupt_fraction {self.min_corrupt_fraction}"
            )
        if config.security_bits < self.min_security_bits:
            return (
                f"secure aggregation security_bits {config.security_bits} is below the "
                f"policy's min_security_bits {self.min_security_bits}"
            )
        return None

    def _noise_refusal(self, dp: DPTask, secagg: SecAggTask | None) -> str | None:
        """Distributed DP: the noise of the fewest devices a released sum holds."""
        assert dp.params is not None
        if secagg is None:
            return "distributed DP without secure aggregation would release single noisy updates"
        fewest = min(secagg.config.min_clients, dp.params.clients)
        floor_z = dp.params.noise_multiplier * math.sqrt(fewest / dp.params.clients)
        if floor_z < self.min_noise_multiplier:
            return (
                f"distributed DP noise: a sum of {fewest} devices carries noise multiplier "
                f"{floor_z:.3g}, below the policy's min_noise_multiplier {self.min_noise_multiplier}"
            )
        return None
