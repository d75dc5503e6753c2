"""fedge server: round scheduling, aggregation, persistence, HTTP API (runs on a VM)."""

from fedge.server.job import JobConfig, load_job_config, parse_job_config

__all__ = ["JobConfig", "load_job_config", "parse_job_config"]
