"""When a simulated device is online: seeded daily patterns and validated trace files."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.names import check_name

DAY_S = 86_400.0
_H = 3600.0
TRACE_HEADER = ("device_id", "start_s", "end_s")


class Pattern(Enum):
    """Built-in daily availability patterns (simulated time 0 is midnight of day 0)."""

    ALWAYS = "always"
    NIGHT_CHARGING = "night-charging"
    OFFICE_HOURS_IDLE = "office-hours-idle"
    RANDOM_SESSIONS = "random-sessions"


@dataclass(frozen=True)
class Availability:
    """Online intervals of one device, in simulated seconds.

    ``intervals`` are sorted, disjoint and non-touching half-open ``[start, end)`` pairs.
    With ``period_s`` set they repeat every ``period_s`` seconds (and lie within
    ``[0, period_s]``); without it they are absolute and the device stays offline after the last.
    Build instances with :meth:`from_intervals`, which sorts and merges.
    """

    intervals: tuple[tuple[float, float], ...]
    period_s: float | None = None

    def __post_init__(self) -> None:
        if self.period_s is not None and not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ConfigError(
                f"availability period must be a finite number > 0, got {self.period_s}"
            )
        prev_end = -math.inf
        for start, end in self.intervals:
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                raise ConfigError(
                    f"bad availability interval [{start}, {end}): need 0 <= start < end"
                )
            if start <= prev_end:
                raise ConfigError(
                    "availability intervals must be sorted, disjoint and non-touching"
                )
            if self.period_s is not None and end > self.period_s:
                raise ConfigError(
                    f"interval [{start}, {end}) ends after the repeat period {self.period_s}"
                )
            prev_end = end

    @classmethod
    def from_intervals(
        cls, intervals: Iterable[tuple[float, float]], period_s: float | None = None
    ) -> Availability:
        """Sort and merge overlapping or touching intervals into an :class:`Availability`."""
        merged: list[tuple[float, float]] = []
        for start, end in sorted((float(s), float(e)) for s, e in intervals):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return cls(tuple(merged), period_s)

    def _locate(self, t_sim: float) -> tuple[float, float, int]:
        """Return (period base, phase in period, index of the last interval starting <= phase)."""
        if self.period_s is None:
            base, phase = 0.0, t_sim
        else:
            phase = t_sim % self.period_s
            base = t_sim - phase
        starts = [s for s, _ in self.intervals]
        return base, phase, bisect.bisect_right(starts, phase) - 1

    def is_available(self, t_sim: float) -> bool:
        """Return True if the device is online at simulated time ``t_sim``."""
        _, phase, i = self._locate(t_sim)
        return i >= 0 and phase < self.intervals[i][1]

    def next_available(self, t_sim: float) -> float:
        """Return the earliest time >= ``t_sim`` at which the device is online (inf if never)."""
        if self.is_available(t_sim):
            return t_sim
        base, _, i = self._locate(t_sim)
        if i + 1 < len(self.intervals):
            return base + self.intervals[i + 1][0]
        if self.period_s is not None and self.intervals:
            return base + self.period_s + self.intervals[0][0]
        return math.inf

    def next_unavailable(self, t_sim: float) -> float:
        """Return the earliest time >= ``t_sim`` at which the device is offline (inf if never)."""
        if not self.is_available(t_sim):
            return t_sim
        base, _, i = self._locate(t_sim)
        end = self.intervals[i][1]
        if self.period_s is not None and end == self.period_s and self.intervals[0][0] == 0.0:
            if len(self.intervals) == 1:
                return math.inf
            end = self.period_s + self.intervals[0][1]
        return base + end


def _daily(pieces: Iterable[tuple[float, float]]) -> Availability:
    """Build a daily pattern from intervals that may run past midnight (end up to 2 days)."""
    split: list[tuple[float, float]] = []
    for start, end in pieces:
        length = end - start
        if length >= DAY_S:
            return Availability(((0.0, DAY_S),), DAY_S)
        start %= DAY_S
        end = start + length
        if end <= DAY_S:
            split.append((start, end))
        else:
            split += [(start, DAY_S), (0.0, end - DAY_S)]
    return Availability.from_intervals(split, DAY_S)


def _jitter(rng: np.random.Generator, sd_h: float, bound_h: float) -> float:
    return float(np.clip(rng.normal(0.0, sd_h), -bound_h, bound_h)) * _H


def pattern_availability(pattern: str, seed: int | Sequence[int]) -> Availability:
    """Draw one device's daily availability from a named pattern.

    Patterns (times of day, per-device jitter drawn from ``seed``):

    - ``always``: online all day.
    - ``night-charging``: on the charger from 22:00 (jitter -2 h..+3 h) to 07:00 (+-2 h):
      always online at 02:00 and offline at noon.
    - ``office-hours-idle``: idle on a desk from 09:00 to 17:00 (each +-1 h).
    - ``random-sessions``: 1 + Poisson(2) sessions a day at uniform start times, each lasting
      an exponential 45 min (5 min..3 h).

    Raises
    ------
    ConfigError
        If ``pattern`` is unknown.
    """
    try:
        kind = Pattern(pattern)
    except ValueError:
        raise ConfigError(
            f"unknown availability pattern {pattern!r}; "
            f"known: {', '.join(p.value for p in Pattern)}"
        ) from None
    rng = np.random.default_rng(seed)
    if kind is Pattern.ALWAYS:
        return _daily([(0.0, DAY_S)])
    if kind is Pattern.NIGHT_CHARGING:
        start = 22 * _H + float(np.clip(rng.normal(0.0, 1.0), -2.0, 3.0)) * _H
        end = DAY_S + 7 * _H + _jitter(rng, 1.0, 2.0)
        return _daily([(start, end)])
    if kind is Pattern.OFFICE_HOURS_IDLE:
        return _daily([(9 * _H + _jitter(rng, 0.5, 1.0), 17 * _H + _jitter(rng, 0.5, 1.0))])
    sessions = 1 + int(rng.poisson(2.0))
    starts = rng.uniform(0.0, DAY_S, size=sessions)
    lengths = np.clip(rng.exponential(45 * 60.0, size=sessions), 5 * 60.0, 3 * _H)
    return _daily(zip(starts.tolist(), (starts + lengths).tolist(), strict=True))


def _trace_error(path: Path, lineno: int, message: str) -> ConfigError:
    return ConfigError(f"trace {path}:{lineno}: {message}")


def _parse_seconds(text: str, what: str, path: Path, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _trace_error(path, lineno, f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _trace_error(path, lineno, f"{what} must be a finite number >= 0, got {text!r}")
    return value


def load_trace(path: str | Path) -> dict[str, Availability]:
    """Load an availability trace file (format in docs/simulator.md).

    A CSV file: optional ``#!repeat_s=SECONDS`` directive and ``#`` comments, then the header
    ``device_id,start_s,end_s``, then one online interval per line, in seconds from the trace
    start. With ``repeat_s`` the intervals repeat every ``repeat_s`` seconds.

    Parameters
    ----------
    path : str or Path
        The trace file.

    Returns
    -------
    dict of str to Availability
        One entry per device id, in order of first appearance.

    Raises
    ------
    ConfigError
        With the file and line number, if the file is missing or malformed.
    """
    trace_path = Path(path)
    try:
        lines = trace_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read trace {trace_path}: {exc}") from None
    repeat_s: float | None = None
    header_seen = False
    rows: dict[str, list[tuple[float, float]]] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#!"):
            key, eq, value = line[2:].partition("=")
            if header_seen or key.strip() != "repeat_s" or not eq or repeat_s is not None:
                raise _trace_error(
                    trace_path,
                    lineno,
                    "the only directive is one '#!repeat_s=SECONDS' before the header",
                )
            repeat_s = _parse_seconds(value.strip(), "repeat_s", trace_path, lineno)
            if repeat_s == 0:
                raise _trace_error(trace_path, lineno, "repeat_s must be > 0")
            continue
        if line.startswith("#"):
            continue
        fields = tuple(f.strip() for f in line.split(","))
        if not header_seen:
            if fields != TRACE_HEADER:
                raise _trace_error(trace_path, lineno, f"expected header {','.join(TRACE_HEADER)}")
            header_seen = True
            continue
        if len(fields) != 3:
            raise _trace_error(trace_path, lineno, f"expected 3 fields, got {len(fields)}")
        try:
            device = check_name("device id", fields[0])
        except ProtocolError as exc:
            raise _trace_error(trace_path, lineno, str(exc)) from None
        start = _parse_seconds(fields[1], "start_s", trace_path, lineno)
        end = _parse_seconds(fields[2], "end_s", trace_path, lineno)
        if end <= start:
            raise _trace_error(trace_path, lineno, f"end_s {end} must be > start_s {start}")
        if repeat_s is not None and end > repeat_s:
            raise _trace_error(trace_path, lineno, f"end_s {end} exceeds repeat_s {repeat_s}")
        rows.setdefault(device, []).append((start, end))
    if not header_seen:
        raise ConfigError(f"trace {trace_path}: no header line {','.join(TRACE_HEADER)}")
    if not rows:
        raise ConfigError(f"trace {trace_path}: no intervals")
    return {dev: Availability.from_intervals(iv, repeat_s) for dev, iv in rows.items()}
