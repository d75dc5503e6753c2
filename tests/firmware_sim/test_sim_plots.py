"""Tests of firmware_sim.plots: PNG files and the per-round CSV."""

from __future__ import annotations

import csv
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from fedge.edge_client.errors import DataError
from fedge.firmware_sim.plots import (
    ROUND_COLUMNS,
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_epsilon,
    plot_summary,
    write_rounds_csv,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _summary(n_rounds: int, scale: float = 1.0) -> dict[str, Any]:
    rounds = []
    for r in range(1, n_rounds + 1):
        rounds.append(
            {
                "round": r,
                "accuracy": None if r == 2 else 0.5 + 0.05 * r,
                "loss": 2.0 / r,
                "selected": 13,
                "reported": 10 + r % 3,
                "dropped": 3 - r % 3,
                "uplink_bytes": int(scale * 40_000 * r),
                "downlink_bytes": 400_000,
                "duration_s": 1.5 + r,
                **({"epsilon": 0.3 * r} if r % 2 else {}),
            }
        )
    return {"config": {"dataset": "digits", "devices": 50}, "final_accuracy": 0.8, "rounds": rounds}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert len(data) > 5_000
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_plot_summary_writes_three_pngs(tmp_path: Path) -> None:
    paths = plot_summary(_summary(6), tmp_path / "plots")
    assert [p.name for p in paths] == ["accuracy_loss.png", "participation.png", "bytes.png"]
    for path in paths:
        assert _png_size(path) == (700, 400)


def test_rounds_csv_has_one_row_per_round(tmp_path: Path) -> None:
    summary = _summary(7)
    path = write_rounds_csv(summary, tmp_path / "rounds.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == ROUND_COLUMNS
        rows = list(reader)
    assert len(rows) == 7
    assert [int(r["round"]) for r in rows] == list(range(1, 8))
    assert rows[1]["accuracy"] == "" and rows[1]["epsilon"] == ""
    assert float(rows[2]["epsilon"]) == pytest.approx(0.9)
    assert int(rows[3]["uplink_bytes"]) == 160_000


def test_accuracy_vs_bytes_and_epsilon(tmp_path: Path) -> None:
    runs = {"float32": _summary(5, 8.0), "int8 top-10%": _summary(5, 0.25)}
    assert _png_size(plot_accuracy_vs_bytes(runs, tmp_path / "bytes.png")) == (900, 450)
    rows = [
        {"epsilon": 0.5, "accuracy": 0.6, "series": "z=1.1"},
        {"epsilon": 2.0, "accuracy": 0.75, "series": "z=1.1"},
        {"epsilon": 8.0, "accuracy": 0.8, "series": "z=0.7"},
        {"epsilon": 1.0, "accuracy": 0.7, "series": "z=0.7"},
        {"epsilon": math.inf, "accuracy": 0.85, "series": "no DP"},
    ]
    assert _png_size(plot_accuracy_vs_epsilon(rows, tmp_path / "eps" / "dp.png")) == (700, 450)


@pytest.mark.parametrize(
    "summary",
    [
        {},
        {"rounds": []},
        {"rounds": [{"round": 1}]},
        {"rounds": [{**_summary(1)["rounds"][0], "selected": "many"}]},
        {"rounds": [{**_summary(1)["rounds"][0], "accuracy": "high"}]},
    ],
)
def test_bad_summaries_are_data_errors(tmp_path: Path, summary: dict[str, Any]) -> None:
    with pytest.raises(DataError):
        plot_summary(summary, tmp_path)


def test_bad_epsilon_rows_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="epsilon"):
        plot_accuracy_vs_epsilon([{"epsilon": 0.0, "accuracy": 0.5}], tmp_path / "x.png")
    with pytest.raises(DataError, match="numeric"):
        plot_accuracy_vs_epsilon([{"epsilon": "1", "accuracy": 0.5}], tmp_path / "x.png")
    with pytest.raises(DataError):
        plot_accuracy_vs_epsilon([], tmp_path / "x.png")
    with pytest.raises(DataError):
        plot_accuracy_vs_bytes({}, tmp_path / "x.png")
