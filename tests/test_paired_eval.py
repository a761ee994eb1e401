"""benchmarks/paired_eval.py pairs two evaluations item by item."""

import json
import math
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark


def write_eval(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps({"model": {"rows": rows}}))
    return folder


def test_differences_are_paired_by_item_and_skip_what_either_side_lacks(tmp_path):
    paired_eval = load_benchmark("paired_eval")
    # the items' own values spread widely; the other run is exactly 0.1 / 0.05 / 0.15 better on each
    base = [{"id": f"s{i}", "view": 0, "seed": 0, "iou": 0.1 * i} for i in range(4)]
    other = [{"id": "s0", "view": 0, "seed": 0, "iou": 0.1},
             {"id": "s1", "view": 0, "seed": 0, "iou": 0.15},
             {"id": "s2", "view": 0, "seed": 0, "iou": 0.35},
             {"id": "s3", "view": 0, "seed": 0, "iou": math.nan},  # unscored there: left out
             {"id": "s9", "view": 0, "seed": 0, "iou": 0.9}]  # not in the baseline: left out
    a = paired_eval.scored_rows(write_eval(tmp_path / "a", base))
    b = paired_eval.scored_rows(write_eval(tmp_path / "b", other))
    summary = paired_eval.paired_differences(a, b, "iou")
    assert summary.n == 3 and summary.missing == 1
    assert summary.mean == pytest.approx(0.1)
    # t interval of (0.1, 0.05, 0.15): std 0.05, t(0.975, 2) = 4.3027
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert (summary.low, summary.high) == pytest.approx((0.1 - half, 0.1 + half))


def test_a_missing_evaluation_is_named(tmp_path):
    paired_eval = load_benchmark("paired_eval")
    with pytest.raises(SystemExit, match="no eval.json"):
        paired_eval.scored_rows(tmp_path)
