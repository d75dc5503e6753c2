"""Typed settings from TOML tables: one loader and one validation style for every config file.

Every config file (``device.toml``, ``server.toml``, ``job.toml``) parses once into frozen
dataclasses that derive from `Settings`. A `Settings` checks itself when it is built, from a
file or from code: the type of every field (bools are not numbers, numbers are finite), then
the ranges its `check` method names. `from_table` turns one TOML table into one of them and
refuses keys it does not know, naming the ones it does.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from fedge.edge_client.errors import ConfigError


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed TOML file ``path``; ConfigError naming ``what`` if missing or invalid."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def section(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The table ``[key]`` of a parsed file ({} when absent); ConfigError if it is no table."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{key}] must be a table")
    return table


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the declared type ``hint`` (other types are checked elsewhere)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, Path)
    return True  # nested settings, enums, parsed specs: they check themselves


_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path",
}


def _describe(hint: Any) -> str:
    """How a message names a declared type: 'an integer', 'a number or none', ..."""
    args = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    words = [_WORDS.get(a, getattr(a, "__name__", str(a))) for a in args if a is not type(None)]
    optional = " (or left out)" if type(None) in args else ""
    return " or ".join(words) + optional


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a settings class (resolved once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class Settings:
    """Base of typed, frozen settings dataclasses that validate themselves when built.

    Subclasses set `SECTION` (the TOML table, used in messages as ``section.field``) and
    override `check` for ranges and relations between fields.
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.init and not _matches(value, hints[item.name]):
                what = _describe(hints[item.name])
                raise ConfigError(f"{self.where(item.name)} must be {what}, got {value!r}")
        self.check()

    def where(self, name: str) -> str:
        """``section.name``, the way messages name a field."""
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def check(self) -> None:
        """Raise ConfigError naming the first value out of range (none by default)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any], **extra: Any) -> Self:
        """Build from one TOML table; unknown keys and wrong types are ConfigErrors.

        ``extra`` supplies fields that do not come from the table itself (e.g. resolved paths).
        """
        known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"[{cls.SECTION}] has unknown keys {sorted(unknown)} (unknown {cls.SECTION} "
                f"settings); allowed: {sorted(known)}"
            )
        try:
            return cls(**{**table, **extra})
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"[{cls.SECTION}]: {exc}") from exc
