"""Job configuration (`job.toml`): what to train, for how long, and how rounds are run."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedge.edge_client.codec import parse_spec
from fedge.edge_client.eligibility import EligibilityRules
from fedge.edge_client.errors import CodecError, ConfigError, PrivacyError, ProtocolError
from fedge.edge_client.privacy import parse_dp_spec
from fedge.edge_client.protocol.topics import check_name

OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
LR_SCHEDULES = ("constant", "exponential", "step", "inverse_sqrt")


@dataclass(frozen=True)
class SelectionConfig:
    """Who takes part in a round and when it closes."""

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
class TrainingConfig:
    """What devices do locally."""

    local_epochs: int = 1
    batch_size: int | None = None
    lr: float = 0.1
    lr_schedule: str = "constant"
    lr_decay: float = 1.0
    lr_step_rounds: int = 10
    max_steps: int | None = None
    max_example_weight: int = 10_000
    shuffle: bool = True

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
class ServerOptimizerConfig:
    """Server optimizer of Reddi et al., "Adaptive Federated Optimization"."""

    name: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    epsilon: float = 1e-3


@dataclass(frozen=True)
class EvaluationConfig:
    """Central evaluation on held-out data, and federated evaluation rounds."""

    central_every: int = 1
    central_data: str | None = None
    federated_every: int = 0
    federated_devices: int = 10


@dataclass(frozen=True)
class JobConfig:
    """A whole federated training job."""

    name: str
    fleet: str
    artifact: Path
    rounds: int
    seed: int = 0
    codec: str = "none"
    downlink: str | None = None
    secagg: dict[str, Any] = field(default_factory=dict)
    dp: str | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored with the job)."""
        out = asdict(self)
        out["artifact"] = str(self.artifact)
        return out


def _table(raw: dict[str, Any], key: str, cls: type) -> Any:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{key}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[{key}] has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        return cls(**table)
    except TypeError as exc:
        raise ConfigError(f"[{key}]: {exc}") from exc


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_types(job: JobConfig) -> None:
    """Every field has the type its dataclass declares (ints are not bools, numbers are numbers)."""
    if isinstance(job.rounds, bool) or not isinstance(job.rounds, int):
        raise ConfigError("job.rounds must be an integer")
    if isinstance(job.seed, bool) or not isinstance(job.seed, int):
        raise ConfigError("job.seed must be an integer")
    for table, obj in (
        ("selection", job.selection),
        ("training", job.training),
        ("server_optimizer", job.optimizer),
        ("evaluation", job.evaluation),
    ):
        for spec in dataclasses.fields(obj):
            name = spec.name
            value = getattr(obj, name)
            kind = str(spec.type)
            if value is None and "None" in kind:
                continue
            if kind.startswith("bool"):
                ok = isinstance(value, bool)
            elif kind.startswith("int"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind.startswith("float"):
                ok = (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                )
            else:
                ok = isinstance(value, str)
            if not ok:
                raise ConfigError(f"{table}.{name} must be of type {kind}, got {value!r}")


def validate(job: JobConfig) -> JobConfig:
    """Check every value's type and range; raise ConfigError naming the first bad one."""
    _check_types(job)
    s, t, o = job.selection, job.training, job.optimizer
    _check(isinstance(job.rounds, int) and job.rounds >= 1, "job.rounds must be an integer >= 1")
    _check(
        isinstance(s.target_reports, int) and s.target_reports >= 1,
        "selection.target_reports must be >= 1",
    )
    _check(
        isinstance(s.min_reports, int) and 1 <= s.min_reports <= s.target_reports,
        "selection.min_reports must be between 1 and target_reports",
    )
    _check(s.over_selection >= 1.0, "selection.over_selection must be >= 1.0")
    _check(s.round_deadline_s > 0 and s.selection_timeout_s > 0, "timeouts must be positive")
    _check(s.max_attempts >= 1, "selection.max_attempts must be >= 1")
    _check(0.0 <= s.min_battery <= 1.0, "selection.min_battery must be in [0, 1]")
    _check(1 <= t.local_epochs <= 1000, "training.local_epochs must be between 1 and 1000")
    _check(0 < t.lr <= 100, "training.lr must be in (0, 100]")
    _check(
        t.max_steps is None or 1 <= t.max_steps <= 10**9, "training.max_steps must be in [1, 1e9]"
    )
    _check(t.lr_step_rounds >= 1, "training.lr_step_rounds must be >= 1")
    _check(t.lr_schedule in LR_SCHEDULES, f"training.lr_schedule must be one of {LR_SCHEDULES}")
    _check(0 < t.lr_decay <= 1.0, "training.lr_decay must be in (0, 1]")
    _check(t.max_example_weight >= 1, "training.max_example_weight must be >= 1")
    _check(
        o.name in OPTIMIZERS, f"server_optimizer.name must be one of {OPTIMIZERS}, got {o.name!r}"
    )
    _check(o.lr > 0, "server_optimizer.lr must be positive")
    _check(
        0 <= o.momentum < 1 and 0 <= o.beta1 < 1 and 0 <= o.beta2 < 1,
        "server_optimizer momentum/betas must be in [0, 1)",
    )
    _check(o.epsilon > 0, "server_optimizer.epsilon must be positive")
    for name, text in (("codec", job.codec), ("downlink", job.downlink)):
        if text is not None:
            try:
                parse_spec(text)
            except CodecError as exc:
                raise ConfigError(f"job.{name}: {exc}") from exc
    if parse_spec(job.codec).predict is not None:
        _check(
            job.downlink is not None,
            f"job.codec {job.codec!r} uses pred, which predicts from the previous global step "
            "that devices receive as the downlink delta: set job.downlink (fedge sim --downlink), "
            "e.g. 'q8'",
        )
        _check(
            not job.secagg.get("enabled"),
            f"job.codec {job.codec!r}: pred is not used with secure aggregation; drop pred",
        )
    if job.dp:
        try:
            spec = parse_dp_spec(job.dp)
        except PrivacyError as exc:
            raise ConfigError(f"job.dp: {exc}") from exc
        secure = bool(job.secagg.get("enabled"))
        _check(
            not spec.requires_secagg or secure,
            f"job.dp {job.dp!r} is distributed DP: it needs secure aggregation ([secagg] enabled = true)",
        )
        _check(
            spec.requires_secagg or not secure,
            f"job.dp {job.dp!r} is central DP, which re-clips each update on the server; secure "
            "aggregation hides single updates: use distributed DP with secure aggregation",
        )
        _check(
            not spec.requires_secagg or str(parse_spec(job.codec)) == "none",
            f"job.dp {job.dp!r} is distributed DP, which quantizes and noises updates itself: "
            f"set codec = 'none', not {job.codec!r}",
        )
    return job


def parse_job_config(raw: dict[str, Any], base_dir: Path) -> JobConfig:
    """Build and validate a JobConfig from parsed TOML; paths resolve against ``base_dir``."""
    try:
        return _parse_job_config(raw, base_dir)
    except (TypeError, ValueError, AttributeError) as exc:  # wrong value types in the TOML
        raise ConfigError(f"invalid job config: {exc}") from exc


def _parse_job_config(raw: dict[str, Any], base_dir: Path) -> JobConfig:
    job = raw.get("job")
    if not isinstance(job, dict):
        raise ConfigError("job.toml needs a [job] table with name, fleet, artifact and rounds")
    allowed = {"name", "fleet", "artifact", "rounds", "seed", "codec", "downlink", "dp"}
    unknown = set(job) - allowed
    if unknown:
        raise ConfigError(f"[job] has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("name", "fleet", "artifact", "rounds"):
        if key not in job:
            raise ConfigError(f"[job] is missing {key!r}")
    try:
        check_name("job name", job["name"])
        check_name("fleet", job["fleet"])
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    if not isinstance(job["artifact"], str):
        raise ConfigError("job.artifact must be a path string")
    artifact = Path(job["artifact"])
    if not artifact.is_absolute():
        artifact = base_dir / artifact
    secagg = raw.get("secagg", {})
    if not isinstance(secagg, dict):
        raise ConfigError("[secagg] must be a table")
    evaluation = _table(raw, "evaluation", EvaluationConfig)
    if evaluation.central_data and not Path(evaluation.central_data).is_absolute():
        evaluation = EvaluationConfig(
            **{**asdict(evaluation), "central_data": str(base_dir / evaluation.central_data)}
        )
    cfg = JobConfig(
        name=job["name"],
        fleet=job["fleet"],
        artifact=artifact,
        rounds=job["rounds"],
        seed=job.get("seed", 0),
        codec=str(job.get("codec", "none")),
        downlink=job.get("downlink"),
        dp=job.get("dp"),
        secagg=secagg,
        selection=_table(raw, "selection", SelectionConfig),
        training=_table(raw, "training", TrainingConfig),
        optimizer=_table(raw, "server_optimizer", ServerOptimizerConfig),
        evaluation=evaluation,
    )
    return validate(cfg)


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    """Inverse of `JobConfig.to_dict` (used when resuming a stored job)."""
    return validate(
        JobConfig(
            name=data["name"],
            fleet=data["fleet"],
            artifact=Path(data["artifact"]),
            rounds=data["rounds"],
            seed=data["seed"],
            codec=data["codec"],
            downlink=data.get("downlink"),
            secagg=data["secagg"],
            dp=data["dp"],
            selection=SelectionConfig(**data["selection"]),
            training=TrainingConfig(**data["training"]),
            optimizer=ServerOptimizerConfig(**data["optimizer"]),
            evaluation=EvaluationConfig(**data["evaluation"]),
        )
    )


def load_job_config(path: Path) -> JobConfig:
    """Read and validate a job.toml."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"job config not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_job_config(raw, Path(path).resolve().parent)
