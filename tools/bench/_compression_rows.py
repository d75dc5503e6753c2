"""The compression benchmark's rows: a finished run summarised, the best candidate, seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.edge_client.errors import ConfigError

GOAL_RATIO = 100.0
GOAL_POINTS = 1.0
COLUMNS = (
    "row",
    "final acc",
    "last-3 acc",
    "wire B/dev",
    "wire ratio",
    "payload B",
    "payload ratio",
    "cum. uplink MB",
    "client overlap",
    "wall s",
)


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    label: str
    kind: str  # "fedge" or "tff"
    spec: str
    final_accuracy: float
    last3_accuracy: float
    wire_bytes_per_device: float
    wire_ratio: float
    payload_bytes: int | None
    payload_ratio: float | None
    cumulative_uplink_mb: float
    client_overlap: float | None
    wall_s: float

    def cells(self) -> list[object]:
        """The table cells in :data:`COLUMNS` order."""
        return [
            self.label,
            round(100 * self.final_accuracy, 2),
            round(100 * self.last3_accuracy, 2),
            round(self.wire_bytes_per_device),
            round(self.wire_ratio, 1),
            self.payload_bytes,
            None if self.payload_ratio is None else round(self.payload_ratio, 1),
            round(self.cumulative_uplink_mb, 3),
            None if self.client_overlap is None else f"{100 * self.client_overlap:.0f} %",
            round(self.wall_s),
        ]


def client_overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """Mean share of ``b``'s clients that ``a`` also picked, round by round (1.0 = same)."""
    if not a or len(a) != len(b):
        return 0.0
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


def accuracy_curve(summary: Mapping[str, Any]) -> list[float]:
    """Central accuracy after each committed round of a finished run."""
    return [float(r["accuracy"]) for r in summary["rounds"]]


@dataclass(frozen=True)
class SeedRow:
    """One spec across partition seeds: final and last-3 accuracy per seed."""

    spec: str
    finals: tuple[float, ...]
    last3s: tuple[float, ...]

    @property
    def mean_final(self) -> float:
        return float(np.mean(self.finals))

    @property
    def mean_last3(self) -> float:
        return float(np.mean(self.last3s))


def seed_rows(curves: Mapping[str, Sequence[Sequence[float]]]) -> list[SeedRow]:
    """Per spec, its accuracy curves (one per seed, in seed order) summarised."""
    return [
        SeedRow(spec, tuple(c[-1] for c in runs), tuple(float(np.mean(c[-3:])) for c in runs))
        for spec, runs in curves.items()
    ]


def seed_table(rows: Sequence[SeedRow]) -> list[list[object]]:
    """Cells of the across-seeds table; the first row is the reference (``none``)."""
    ref = rows[0]
    return [
        [
            r.spec,
            *(round(100 * f, 2) for f in r.finals),
            round(100 * r.mean_final, 2),
            round(100 * r.mean_last3, 2),
            round(100 * (ref.mean_final - r.mean_final), 2) + 0.0,
        ]
        for r in rows
    ]  # + 0.0: no "-0" when a row ties with the reference


def make_row(
    label: str,
    kind: str,
    spec: str,
    summary: Mapping[str, Any],
    dense: int,
    payload: int | None,
    clients: float | None,
) -> Row:
    """Summarise one run; raises ConfigError if a round lost devices (rows would not compare)."""
    rounds = summary["rounds"]
    if not rounds:
        raise ConfigError(f"{label}: no committed rounds (status {summary.get('status')})")
    short = [r["round"] for r in rounds if r["reported"] != r["selected"]]
    if short:
        raise ConfigError(f"{label}: rounds {short} aggregated fewer devices than selected")
    acc = accuracy_curve(summary)
    up = sum(r["uplink_bytes"] for r in rounds)
    per_device = up / sum(r["reported"] for r in rounds)
    return Row(
        label=label,
        kind=kind,
        spec=spec,
        final_accuracy=acc[-1],
        last3_accuracy=float(np.mean(acc[-3:])),
        wire_bytes_per_device=per_device,
        wire_ratio=dense / per_device,
        payload_bytes=payload,
        payload_ratio=None if payload is None else dense / payload,
        cumulative_uplink_mb=up / 1e6,
        client_overlap=clients,
        wall_s=float(summary.get("wall_time_s", 0.0)),
    )


def pick_best(rows: Sequence[Row], candidates: Sequence[str]) -> Row | None:
    """Highest final accuracy among candidate rows with wire ratio >= GOAL_RATIO."""
    ok = [
        r for r in rows if r.spec in candidates and r.kind == "fedge" and r.wire_ratio >= GOAL_RATIO
    ]
    return max(ok, key=lambda r: (r.final_accuracy, -(r.payload_bytes or 0)), default=None)


def goal_on_means(
    across: Sequence[SeedRow], rows: Sequence[Row], candidates: Sequence[str], seeds: Sequence[int]
) -> str:
    """The goal judged on mean final accuracy over ``seeds`` (wire ratios from ``rows``)."""
    ratio = {r.spec: r.wire_ratio for r in rows if r.kind == "fedge"}
    fits = [r for r in across if r.spec in candidates and ratio[r.spec] >= GOAL_RATIO]
    best = max(fits, key=lambda r: r.mean_final, default=None)
    if best is None:
        return f"Seeds {', '.join(map(str, seeds))}: no candidate at >= {GOAL_RATIO:.0f}x."
    gap = across[0].mean_final - best.mean_final
    return (
        f"Seeds {', '.join(map(str, seeds))}; best candidate at >= {GOAL_RATIO:.0f}x by mean "
        f"final accuracy: {best.spec}, {100 * abs(gap):.2f} points "
        f"{'below' if gap > 0 else 'above'} none (goal "
        f"{'met' if gap <= GOAL_POINTS / 100 else 'not met'})."
    )
