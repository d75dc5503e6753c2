"""A job (`job.toml`): what to train, for how long, and how rounds are run, as typed settings.

`parse_job_config` turns the file's tables into a `JobConfig` once: the codec and downlink
specs, the DP spec and the ``[secagg]`` table arrive parsed, and every combination the
server cannot run is refused here, naming the setting. Nothing downstream parses them again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fedge.edge_client.codec import CodecSpec, parse_spec
from fedge.edge_client.errors import CodecError, ConfigError, PrivacyError, ProtocolError
from fedge.edge_client.names import check_name
from fedge.edge_client.privacy import DPSpec, format_dp_spec, parse_dp_spec
from fedge.edge_client.tables import Settings, check, load_toml, section
from fedge.server.job_settings import (
    LR_SCHEDULES,
    OPTIMIZERS,
    EvaluationConfig,
    SecureSettings,
    SelectionConfig,
    ServerOptimizerConfig,
    TrainingConfig,
)

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "EvaluationConfig",
    "JobConfig",
    "SecureSettings",
    "SelectionConfig",
    "ServerOptimizerConfig",
    "TrainingConfig",
    "job_from_dict",
    "load_job_config",
    "parse_job_config",
]

JOB_KEYS = ("name", "fleet", "artifact", "rounds", "seed", "codec", "downlink", "dp")
NO_COMPRESSION = parse_spec("none")


@dataclass(frozen=True)
class JobConfig(Settings):
    """A whole federated training job, checked when it is built."""

    SECTION: ClassVar[str] = "job"
    name: str
    fleet: str
    artifact: Path
    rounds: int
    seed: int = 0
    codec: CodecSpec = NO_COMPRESSION
    downlink: CodecSpec | None = None
    secagg: SecureSettings | None = None
    dp: DPSpec | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def check(self) -> None:
        try:
            check_name("job name", self.name)
            check_name("fleet", self.fleet)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        check(self.rounds >= 1, "job.rounds must be an integer >= 1")
        if self.codec.predict is not None:
            check(
                self.downlink is not None,
                f"job.codec {str(self.codec)!r} uses pred, which predicts from the previous "
                "global step that devices receive as the downlink delta: set job.downlink "
                "(fedge sim --downlink), e.g. 'q8'",
            )
            check(
                self.secagg is None,
                f"job.codec {str(self.codec)!r}: pred is not used with secure aggregation; "
                "drop pred",
            )
        if self.dp is not None:
            self._check_dp(self.dp)

    def _check_dp(self, dp: DPSpec) -> None:
        text = format_dp_spec(dp)
        check(
            not dp.requires_secagg or self.secagg is not None,
            f"job.dp {text!r} is distributed DP: it needs secure aggregation "
            "([secagg] enabled = true)",
        )
        check(
            dp.requires_secagg or self.secagg is None,
            f"job.dp {text!r} is central DP, which re-clips each update on the server; secure "
            "aggregation hides single updates: use distributed DP with secure aggregation",
        )
        check(
            not dp.requires_secagg or str(self.codec) == "none",
            f"job.dp {text!r} is distributed DP, which quantizes and noises updates itself: "
            f"set codec = 'none', not {str(self.codec)!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, the tables of a job file (stored with the job, echoed by the API)."""
        return {
            "name": self.name,
            "fleet": self.fleet,
            "artifact": str(self.artifact),
            "rounds": self.rounds,
            "seed": self.seed,
            "codec": str(self.codec),
            "downlink": str(self.downlink) if self.downlink is not None else None,
            "secagg": self.secagg.to_table() if self.secagg is not None else {},
            "dp": format_dp_spec(self.dp) if self.dp is not None else None,
            "selection": asdict(self.selection),
            "training": asdict(self.training),
            "optimizer": asdict(self.optimizer),
            "evaluation": asdict(self.evaluation),
        }

    def differences(self, other: JobConfig) -> list[str]:
        """Each setting that differs from ``other``, as ``key: other's value -> this value``."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        return [
            f"{key}: {theirs.get(key)!r} -> {mine.get(key)!r}"
            for key in sorted(mine.keys() | theirs.keys())
            if mine.get(key) != theirs.get(key)
        ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # an empty table (secure aggregation off) adds no key
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _codec(text: Any, key: str) -> CodecSpec:
    check(isinstance(text, str), f"job.{key} must be a codec spec string")
    try:
        return parse_spec(text)
    except CodecError as exc:
        raise ConfigError(f"job.{key}: {exc}") from exc


def _dp(text: Any) -> DPSpec:
    check(isinstance(text, str), "job.dp must be a DP spec string")
    try:
        return parse_dp_spec(text)
    except PrivacyError as exc:
        raise ConfigError(f"job.dp: {exc}") from exc


def _job_table(raw: dict[str, Any]) -> dict[str, Any]:
    job = raw.get("job")
    if not isinstance(job, dict):
        raise ConfigError("job.toml needs a [job] table with name, fleet, artifact and rounds")
    unknown = set(job) - set(JOB_KEYS)
    if unknown:
        raise ConfigError(f"[job] has unknown keys {sorted(unknown)}; allowed: {sorted(JOB_KEYS)}")
    for key in ("name", "fleet", "artifact", "rounds"):
        if key not in job:
            raise ConfigError(f"[job] is missing {key!r}")
    check(isinstance(job["artifact"], str), "job.artifact must be a path string")
    return job


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def parse_job_config(raw: dict[str, Any], base_dir: Path) -> JobConfig:
    """A validated JobConfig from a parsed job file; relative paths resolve against ``base_dir``.

    Raises
    ------
    ConfigError
        Naming the first missing, unknown, mistyped or out-of-range setting, or a combination
        the server cannot run.
    """
    job = _job_table(raw)
    evaluation = section(raw, "evaluation")
    if isinstance(evaluation.get("central_data"), str):
        evaluation = {
            **evaluation,
            "central_data": str(_resolve(base_dir, evaluation["central_data"])),
        }
    return JobConfig(
        name=job["name"],
        fleet=job["fleet"],
        artifact=_resolve(base_dir, job["artifact"]),
        rounds=job["rounds"],
        seed=job.get("seed", 0),
        codec=_codec(job.get("codec", "none"), "codec"),
        downlink=_codec(job["downlink"], "downlink") if job.get("downlink") is not None else None,
        dp=_dp(job["dp"]) if job.get("dp") is not None else None,
        secagg=SecureSettings.from_secagg_table(section(raw, "secagg")),
        selection=SelectionConfig.from_table(section(raw, "selection")),
        training=TrainingConfig.from_table(section(raw, "training")),
        optimizer=ServerOptimizerConfig.from_table(section(raw, "server_optimizer")),
        evaluation=EvaluationConfig.from_table(evaluation),
    )


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    """Inverse of `JobConfig.to_dict` (a stored job, read back when it resumes)."""
    tables = {
        "job": {key: data[key] for key in JOB_KEYS if data.get(key) is not None},
        "secagg": data.get("secagg") or {},
        "selection": data["selection"],
        "training": data["training"],
        "server_optimizer": data["optimizer"],
        "evaluation": data["evaluation"],
    }
    return parse_job_config(tables, Path("/"))


def load_job_config(path: Path) -> JobConfig:
    """Read and validate a job.toml."""
    return parse_job_config(load_toml(path, "job config"), Path(path).resolve().parent)
