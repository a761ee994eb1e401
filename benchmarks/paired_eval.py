"""Compare runs evaluated on the same held-out views: paired differences with 95% t-intervals.

Each EVAL is an ``eval.json`` written by ``vilearn evaluate`` (or its folder). The first is the
baseline; for every other run and metric the script prints the mean of (run - baseline) over the
(shape, view, seed) items both scored, with its interval. Pairing removes the spread between
views, which dominates the unpaired intervals of eval.md.

    python benchmarks/paired_eval.py BASELINE_EVAL OTHER_EVAL... [--metrics fscore@0.05,iou]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from vilearn.metrics.stats import mean_ci


def scored_rows(path: Path) -> dict[tuple, dict]:
    """(id, view, seed) -> that item's metrics, from an eval.json or its folder."""
    path = path / "eval.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{path}: no eval.json (run `vilearn evaluate RUN --out FOLDER` first)")
    rows = json.loads(path.read_text())["model"]["rows"]
    return {(row["id"], row.get("view"), row.get("seed")): row for row in rows}


def paired_differences(baseline: dict[tuple, dict], other: dict[tuple, dict], metric: str):
    """``Summary`` of other - baseline over the items both scored with a finite value."""
    differences = [other[key][metric] - row[metric] for key, row in baseline.items()
                   if key in other and metric in row and metric in other[key]]
    return mean_ci(d for d in differences if not math.isinf(d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    parser.add_argument("--metrics", default="fscore@0.05,iou,chamfer_l1,silhouette_iou")
    args = parser.parse_args()
    baseline = scored_rows(args.baseline)
    print(f"baseline: {args.baseline} ({len(baseline)} items)")
    print("| run | metric | mean difference | 95% interval | items |")
    print("|---|---|---|---|---|")
    for path in args.others:
        other = scored_rows(path)
        for metric in args.metrics.split(","):
            summary = paired_differences(baseline, other, metric)
            print(f"| {path} | {metric} | {summary.mean:+.4f} | [{summary.low:+.4f}, {summary.high:+.4f}] "
                  f"| {summary.n} |")


if __name__ == "__main__":
    main()
