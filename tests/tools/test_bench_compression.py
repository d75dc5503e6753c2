"""The compression benchmark's across-seeds summary."""

from __future__ import annotations

import pytest

from fedge.tools.bench._compression_rows import Row, goal_on_means, seed_rows, seed_table


def test_seed_rows_take_final_and_last3_per_seed_and_compare_means_with_none() -> None:
    curves = {
        "none": [[0.5, 0.7, 0.74, 0.76], [0.5, 0.7, 0.72, 0.74]],
        "topk:0.015+q2+pred": [[0.4, 0.6, 0.72, 0.73], [0.4, 0.6, 0.70, 0.71]],
    }
    none, pred = seed_rows(curves)
    assert none.finals == (0.76, 0.74) and pred.finals == (0.73, 0.71)
    assert pred.last3s == pytest.approx(((0.6 + 0.72 + 0.73) / 3, (0.6 + 0.70 + 0.71) / 3))
    assert none.mean_final == pytest.approx(0.75) and pred.mean_final == pytest.approx(0.72)
    table = seed_table([none, pred])
    assert table[0][:3] == ["none", 76.0, 74.0] and str(table[0][-1]) == "0.0"
    assert table[1][0] == "topk:0.015+q2+pred" and table[1][-1] == pytest.approx(3.0)
    a_hair_better = seed_rows({"q8": [[0.76001], [0.74]]})[0]
    assert str(seed_table([none, a_hair_better])[1][-1]) == "0.0"  # not "-0.0"


def fedge_row(spec: str, wire_ratio: float) -> Row:
    return Row(spec, "fedge", spec, 0.7, 0.7, 21149 / wire_ratio, wire_ratio, None, None, 0.1,
               1.0, 60.0)


def test_goal_on_means_picks_the_best_candidate_that_fits_the_ratio() -> None:
    across = seed_rows({
        "none": [[0.76], [0.74]],
        "topk:0.03+q2": [[0.755], [0.74]],  # within a point, but only 77x
        "topk:0.015+q2+pred": [[0.745], [0.73]],  # 1.25 points below at 109x
        "topk:0.01+q4": [[0.71], [0.70]],
    })
    rows = [fedge_row("none", 1.0), fedge_row("topk:0.03+q2", 77.0),
            fedge_row("topk:0.015+q2+pred", 109.0), fedge_row("topk:0.01+q4", 120.0)]
    candidates = ["topk:0.03+q2", "topk:0.015+q2+pred", "topk:0.01+q4"]
    note = goal_on_means(across, rows, candidates, [0, 1])
    assert "topk:0.015+q2+pred, 1.25 points below none (goal not met)" in note
    close = seed_rows({"none": [[0.76], [0.74]], "topk:0.015+q2+pred": [[0.755], [0.74]]})
    assert "(goal met)" in goal_on_means(close, rows, candidates, [0, 1])
    above = seed_rows({"none": [[0.76], [0.74]], "topk:0.015+q2+pred": [[0.77], [0.76]]})
    assert "1.50 points above none (goal met)" in goal_on_means(above, rows, candidates, [0, 1])
    assert "no candidate" in goal_on_means(across, rows, ["topk:0.03+q2"], [0, 1])
