"""A posted job config (TOML text or JSON of the same tables) into a checked `JobConfig`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from fedge.edge_client.errors import ConfigError
from fedge.server.job import JobConfig, parse_job_config

MAX_JOB_BODY = 256 * 1024
TOML_TYPES = ("application/toml", "text/plain", "text/x-toml", "")


def parse_job_body(body: bytes, content_type: str) -> dict[str, Any]:
    """A job config from a request body: JSON (by content type) or TOML text.

    Raises
    ------
    ConfigError
        If the body is too large, not UTF-8, not valid JSON/TOML, or not a table.
    """
    if len(body) > MAX_JOB_BODY:
        raise ConfigError(f"job config is {len(body)} bytes, over the {MAX_JOB_BODY}-byte limit")
    media = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if media.endswith("json"):
            raw = json.loads(text)
        elif media in TOML_TYPES:
            raw = tomllib.loads(text)
        else:
            raise ConfigError(
                f"send the job config as application/toml or application/json, not {media!r}"
            )
    except UnicodeDecodeError as exc:
        raise ConfigError(f"job config is not UTF-8 text: {exc}") from exc
    except (
        ValueError,
        RecursionError,
    ) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(
            f"job config is not valid {'JSON' if media.endswith('json') else 'TOML'}: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"job config must be a table of tables, got {type(raw).__name__}")
    return raw


def build_job(raw: dict[str, Any], base_dir: Path) -> JobConfig:
    """`parse_job_config` with every malformed-value failure reported as ConfigError."""
    try:
        return parse_job_config(raw, base_dir)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError(f"invalid job config: {exc}") from exc
