"""The tables of a job (`job.toml`): selection, training, server optimizer, evaluation, [secagg]."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from fedge.edge_client.eligibility import EligibilityRules
from fedge.edge_client.tables import Settings, check

OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
LR_SCHEDULES = ("constant", "exponential", "step", "inverse_sqrt")
SECAGG_GRAPHS = ("harary", "complete")


@dataclass(frozen=True)
class SelectionConfig(Settings):
    """Who takes part in a round and when it closes."""

    SECTION: ClassVar[str] = "selection"
    target_reports: int = 10
    over_selection: float = 1.3
    min_reports: int = 8
    selection_timeout_s: float = 30.0
    round_deadline_s: float = 60.0
    max_attempts: int = 3
    require_charging: bool = False
    require_unmetered: bool = False
    require_idle: bool = False
    min_battery: float = 0.0
    min_free_memory_mb: int = 0
    retry_window_s: float = 10.0
    quiet_period_s: float = 0.5
    wake_all: bool = False  # every round-open wakes every waiting device (not a sample)

    def check(self) -> None:
        check(self.target_reports >= 1, "selection.target_reports must be >= 1")
        check(
            1 <= self.min_reports <= self.target_reports,
            "selection.min_reports must be between 1 and target_reports",
        )
        check(self.over_selection >= 1.0, "selection.over_selection must be >= 1.0")
        check(
            self.round_deadline_s > 0 and self.selection_timeout_s > 0,
            "timeouts must be positive",
        )
        check(self.max_attempts >= 1, "selection.max_attempts must be >= 1")
        check(0.0 <= self.min_battery <= 1.0, "selection.min_battery must be in [0, 1]")

    @property
    def eligibility(self) -> EligibilityRules:
        """The job's eligibility rules (the same rules a device's owner can set)."""
        return EligibilityRules(
            require_charging=self.require_charging,
            require_unmetered=self.require_unmetered,
            require_idle=self.require_idle,
            min_battery=self.min_battery,
            min_free_memory_mb=self.min_free_memory_mb,
        )

    @property
    def selected_per_round(self) -> int:
        """Number of devices that get a task (target times the over-selection factor)."""
        return max(self.target_reports, math.ceil(self.target_reports * self.over_selection))


@dataclass(frozen=True)
class TrainingConfig(Settings):
    """What devices do locally."""

    SECTION: ClassVar[str] = "training"
    local_epochs: int = 1
    batch_size: int | None = None
    lr: float = 0.1
    lr_schedule: str = "constant"
    lr_decay: float = 1.0
    lr_step_rounds: int = 10
    max_steps: int | None = None
    max_example_weight: int = 10_000
    shuffle: bool = True

    def check(self) -> None:
        check(1 <= self.local_epochs <= 1000, "training.local_epochs must be between 1 and 1000")
        check(0 < self.lr <= 100, "training.lr must be in (0, 100]")
        check(
            self.max_steps is None or 1 <= self.max_steps <= 10**9,
            "training.max_steps must be in [1, 1e9]",
        )
        check(self.lr_step_rounds >= 1, "training.lr_step_rounds must be >= 1")
        check(
            self.lr_schedule in LR_SCHEDULES,
            f"training.lr_schedule must be one of {LR_SCHEDULES}",
        )
        check(0 < self.lr_decay <= 1.0, "training.lr_decay must be in (0, 1]")
        check(self.max_example_weight >= 1, "training.max_example_weight must be >= 1")

    def lr_for_round(self, round_number: int) -> float:
        """Client learning rate of a round (1-based), per the schedule."""
        r = max(round_number - 1, 0)
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "exponential":
            return self.lr * self.lr_decay**r
        if self.lr_schedule == "step":
            return self.lr * self.lr_decay ** (r // self.lr_step_rounds)
        return self.lr / math.sqrt(r + 1)


@dataclass(frozen=True)
class ServerOptimizerConfig(Settings):
    """Server optimizer of Reddi et al., "Adaptive Federated Optimization"."""

    SECTION: ClassVar[str] = "server_optimizer"
    name: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    epsilon: float = 1e-3

    def check(self) -> None:
        check(
            self.name in OPTIMIZERS,
            f"server_optimizer.name must be one of {OPTIMIZERS}, got {self.name!r}",
        )
        check(self.lr > 0, "server_optimizer.lr must be positive")
        check(
            0 <= self.momentum < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
            "server_optimizer momentum/betas must be in [0, 1)",
        )
        check(self.epsilon > 0, "server_optimizer.epsilon must be positive")


@dataclass(frozen=True)
class EvaluationConfig(Settings):
    """Central evaluation on held-out data, and federated evaluation rounds."""

    SECTION: ClassVar[str] = "evaluation"
    central_every: int = 1
    central_data: str | None = None
    federated_every: int = 0
    federated_devices: int = 10

    def check(self) -> None:
        check(self.central_every >= 0, "evaluation.central_every must be >= 0")
        check(self.federated_every >= 0, "evaluation.federated_every must be >= 0")
        check(self.federated_devices >= 1, "evaluation.federated_devices must be >= 1")


@dataclass(frozen=True)
class SecureSettings(Settings):
    """The job's [secagg] table: secure aggregation is on when the table says ``enabled``."""

    SECTION: ClassVar[str] = "secagg"
    clip: float = 1.0
    bits: int = 16
    dropout_rate: float = 0.2
    corrupt_fraction: float = 0.0
    graph: str = "harary"
    stage_timeout_s: float = 15.0
    min_clients: int = 3

    def check(self) -> None:
        check(
            self.graph in SECAGG_GRAPHS,
            "secagg.graph must be harary (SecAgg+) or complete (SecAgg)",
        )
        check(
            self.clip > 0 and 1 <= self.bits <= 24 and self.stage_timeout_s > 0,
            "secagg needs clip > 0, bits in [1, 24] and stage_timeout_s > 0",
        )
        check(
            0.0 <= self.dropout_rate < 1.0 and 0.0 <= self.corrupt_fraction < 1.0,
            "secagg.dropout_rate and secagg.corrupt_fraction must be in [0, 1)",
        )
        check(self.min_clients >= 2, "secagg.min_clients must be >= 2")

    @classmethod
    def from_secagg_table(cls, table: dict[str, Any]) -> SecureSettings | None:
        """The settings of a ``[secagg]`` table, or None when it is absent or not enabled."""
        if not table.get("enabled"):
            check(
                set(table) <= {"enabled"} or table.get("enabled") is False,
                "[secagg] sets keys but not enabled = true",
            )
            return None
        check(table["enabled"] is True, "secagg.enabled must be true or false")
        return cls.from_table({k: v for k, v in table.items() if k != "enabled"})

    def to_table(self) -> dict[str, Any]:
        """The ``[secagg]`` table that builds these settings again."""
        return {"enabled": True, **asdict(self)}
