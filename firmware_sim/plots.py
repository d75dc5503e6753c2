"""PNG plots and a per-round CSV from a simulation summary (matplotlib Agg, no pyplot)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from fedge.edge_client.errors import DataError

ROUND_COLUMNS = (
    "round",
    "accuracy",
    "loss",
    "selected",
    "reported",
    "dropped",
    "uplink_bytes",
    "downlink_bytes",
    "duration_s",
    "epsilon",
)
_OPTIONAL = frozenset({"accuracy", "loss", "epsilon"})
_MB = 1e6


def _rounds(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the validated round records of ``summary``."""
    rounds = summary.get("rounds") if isinstance(summary, Mapping) else None
    if not isinstance(rounds, list) or not rounds:
        raise DataError("summary must have a non-empty 'rounds' list")
    for i, rec in enumerate(rounds):
        if not isinstance(rec, Mapping):
            raise DataError(f"summary round #{i} is not a mapping")
        for key in ROUND_COLUMNS:
            if key in _OPTIONAL:
                continue
            value = rec.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(f"summary round #{i} needs a number for {key!r}, got {value!r}")
    return rounds


def _series(rounds: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """Return one column as floats; missing or None values become NaN."""
    out = []
    for i, rec in enumerate(rounds):
        value = rec.get(key)
        if value is None:
            out.append(math.nan)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"summary round #{i}: {key!r} must be a number or null, got {value!r}")
        else:
            out.append(float(value))
    return np.array(out)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def _title(summary: Mapping[str, Any], what: str) -> str:
    config = summary.get("config")
    if isinstance(config, Mapping) and config:
        keys = ("dataset", "partition", "devices", "clients_per_round", "codec")
        brief = ", ".join(f"{k}={config[k]}" for k in keys if k in config)
        return f"{what}\n{brief}" if brief else what
    return what


def _plot_accuracy_loss(
    summary: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    x = _series(rounds, "round")
    fig = Figure(figsize=(7, 4))
    ax: Axes = fig.add_subplot()
    ax.plot(x, _series(rounds, "accuracy"), marker="o", color="tab:blue", label="accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy", color="tab:blue")
    loss_ax = ax.twinx()
    loss_ax.plot(x, _series(rounds, "loss"), marker="s", color="tab:red", label="loss")
    loss_ax.set_ylabel("loss", color="tab:red")
    ax.set_title(_title(summary, "accuracy and loss per round"))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_participation(
    summary: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    x = _series(rounds, "round")
    fig = Figure(figsize=(7, 4))
    ax: Axes = fig.add_subplot()
    for key, marker in (("selected", "o"), ("reported", "s"), ("dropped", "x")):
        ax.plot(x, _series(rounds, key), marker=marker, label=key)
    ax.set_xlabel("round")
    ax.set_ylabel("devices")
    ax.set_title(_title(summary, "participation per round"))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_bytes(
    summary: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    x = _series(rounds, "round")
    fig = Figure(figsize=(7, 4))
    ax: Axes = fig.add_subplot()
    ax.plot(x, _series(rounds, "uplink_bytes") / _MB, marker="o", label="uplink")
    ax.plot(x, _series(rounds, "downlink_bytes") / _MB, marker="s", label="downlink")
    ax.set_xlabel("round")
    ax.set_ylabel("MB per round")
    ax.set_title(_title(summary, "bytes per round"))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_summary(summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``accuracy_loss.png``, ``participation.png`` and ``bytes.png`` into ``out_dir``.

    Parameters
    ----------
    summary : mapping
        ``{"config": {...}, "rounds": [{round, accuracy, loss, selected, reported, dropped,
        uplink_bytes, downlink_bytes, duration_s, epsilon?}, ...], ...}``; accuracy and loss
        may be null for rounds without evaluation.
    out_dir : str or Path
        Created if missing.

    Returns
    -------
    list of Path
        The three PNG files.

    Raises
    ------
    DataError
        If the summary has no rounds or a round lacks a numeric field.
    """
    rounds = _rounds(summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _plot_accuracy_loss(summary, rounds, out / "accuracy_loss.png"),
        _plot_participation(summary, rounds, out / "participation.png"),
        _plot_bytes(summary, rounds, out / "bytes.png"),
    ]


def write_rounds_csv(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Write one CSV row per round with the columns of :data:`ROUND_COLUMNS`.

    Missing optional values (accuracy, loss, epsilon) are written as empty cells.
    """
    rounds = _rounds(summary)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(ROUND_COLUMNS)
        for rec in rounds:
            writer.writerow(["" if rec.get(k) is None else rec[k] for k in ROUND_COLUMNS])
    return target


def plot_accuracy_vs_bytes(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Plot accuracy against cumulative uplink bytes, one line per run (e.g. per codec).

    Parameters
    ----------
    runs : mapping of str to summary
        Label -> simulation summary (as for :func:`plot_summary`).
    path : str or Path
        PNG file to write.
    """
    if not runs:
        raise DataError("plot_accuracy_vs_bytes needs at least one run")
    fig = Figure(figsize=(9, 4.5))
    ax: Axes = fig.add_subplot()
    all_positive = True
    palette = colormaps["tab20" if len(runs) > 10 else "tab10"]
    colors = [palette(i) for i in range(palette.N)]
    for i, (label, summary) in enumerate(runs.items()):
        rounds = _rounds(summary)
        cumulative = np.cumsum(_series(rounds, "uplink_bytes")) / _MB
        all_positive = all_positive and bool(np.all(cumulative > 0))
        ax.plot(cumulative, _series(rounds, "accuracy"), marker="o", markersize=3, label=label,
                color=colors[i % len(colors)])
    if all_positive:
        ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink MB")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs uplink bytes")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # beside the curves
    ax.grid(alpha=0.3, which="both")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, target)


def plot_accuracy_vs_epsilon(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot final accuracy against the DP epsilon, one line per ``series``.

    Parameters
    ----------
    rows : sequence of mapping
        ``{"epsilon": float, "accuracy": float, "series": str (optional)}``; an infinite
        epsilon (no DP) is drawn as a dashed horizontal reference line.
    path : str or Path
        PNG file to write.
    """
    if not rows:
        raise DataError("plot_accuracy_vs_epsilon needs at least one row")
    groups: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        eps, acc = row.get("epsilon"), row.get("accuracy")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (eps, acc)):
            raise DataError(
                f"row #{i} needs numeric 'epsilon' and 'accuracy', got {eps!r}, {acc!r}"
            )
        assert isinstance(eps, int | float) and isinstance(acc, int | float)
        if math.isnan(eps) or eps <= 0:
            raise DataError(f"row #{i}: epsilon must be > 0 (inf for no DP), got {eps}")
        groups.setdefault(str(row.get("series", "DP")), []).append((float(eps), float(acc)))
    fig = Figure(figsize=(7, 4.5))
    ax: Axes = fig.add_subplot()
    any_finite = False
    for label, points in groups.items():
        finite = sorted(p for p in points if math.isfinite(p[0]))
        if finite:
            any_finite = True
            ax.plot([p[0] for p in finite], [p[1] for p in finite], marker="o", label=label)
        for _, acc in (p for p in points if not math.isfinite(p[0])):
            reference = label if label.lower() == "no dp" else f"{label}: no DP"
            ax.axhline(acc, linestyle="--", color="gray", label=reference)
    if any_finite:
        ax.set_xscale("log")
        ticks = sorted(
            {float(f"{p[0]:.2g}") for pts in groups.values() for p in pts if math.isfinite(p[0])}
        )
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epsilon")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs privacy budget")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, target)
