"""Dataset statistics of a grouping: the visible-token fraction and the points per VST token.

Streams over ``groups/*.npz`` one file at a time. The visible fraction |VST| / N is collected
per view (one float each); points per VST token are integers, so they are kept as an exact
histogram (``np.bincount``) and their percentiles are exact too. Views without visible points
are counted (``empty_views``) and left out of both distributions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vilearn.grouping.plot import histogram_panel, side_by_side
from vilearn.grouping.store import read_groups
from vilearn.io import write_json, write_png

PERCENTILES = (5, 25, 50, 75, 95)


def describe(values: np.ndarray) -> dict[str, float]:
    """mean, std, min, p5..p95, max of a 1-D sample (empty -> all NaN becomes None)."""
    if not len(values):
        return {k: None for k in ("mean", "std", "min", *(f"p{p}" for p in PERCENTILES), "max")}
    out = {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min())}
    out.update({f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES})
    out["max"] = float(values.max())
    return out


def describe_counts(counts: np.ndarray) -> dict[str, float]:
    """The same summary for a histogram of integers: counts[v] = how often value v occurs."""
    total = int(counts.sum())
    if not total:
        return describe(np.zeros(0))
    values = np.arange(len(counts))
    mean = float((values * counts).sum() / total)
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / total))
    cdf = np.cumsum(counts)
    # Percentile p of the sorted sample (linear interpolation, numpy's default).
    def pct(p: float) -> float:
        rank = p / 100 * (total - 1)
        lo, hi = np.searchsorted(cdf, np.floor(rank) + 1), np.searchsorted(cdf, np.ceil(rank) + 1)
        return float(lo + (hi - lo) * (rank - np.floor(rank)))

    nonzero = np.flatnonzero(counts)
    out = {"mean": mean, "std": std, "min": float(nonzero[0])}
    out.update({f"p{p}": pct(p) for p in PERCENTILES})
    out["max"] = float(nonzero[-1])
    return out


def group_stats(folder: str | Path, ids: list[str] | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Statistics of the groups files in ``folder``: those of ``ids`` (missing ones are
    skipped), or every ``*.npz`` there.

    Returns:
        the stats dict (what ``stats.json`` holds), the visible fractions (views,) float64 and
        the points-per-VST-token histogram (max + 1,) int64.
    """
    folder = Path(folder)
    fractions, per_token = [], np.zeros(1, np.int64)
    shapes = views = empty = 0
    num_tokens = None
    paths = sorted(folder.glob("*.npz")) if ids is None else [folder / f"{i}.npz" for i in ids]
    for path in paths:
        if not path.is_file():
            continue
        groups = read_groups(path)
        if num_tokens is not None and groups.num_tokens != num_tokens:
            raise ValueError(f"{path}: {groups.num_tokens} tokens, the others have {num_tokens}")
        num_tokens = groups.num_tokens
        shapes += 1
        views += groups.num_views
        empty += int(groups.empty_views.sum())
        frac = groups.visible_fraction()
        fractions.extend(frac[~np.isnan(frac)].tolist())
        hist = np.bincount(groups.hits[groups.visible].astype(np.int64))
        if len(hist) > len(per_token):
            per_token = np.pad(per_token, (0, len(hist) - len(per_token)))
        per_token[:len(hist)] += hist
    if not shapes:
        raise ValueError(f"{folder}: no groups files to summarise")
    fractions = np.asarray(fractions, np.float64)
    summary = describe(fractions)
    stats = {
        "tokens": num_tokens, "shapes": shapes, "views": views, "empty_views": empty,
        "visible_fraction": summary, "visible_fraction_mean": summary["mean"],
        "vst_size_mean": None if summary["mean"] is None else summary["mean"] * num_tokens,
        "points_per_vst_token": describe_counts(per_token),
    }
    return stats, fractions, per_token


def write_stats(folder: str | Path, ids: list[str] | None = None) -> dict:
    """Compute the statistics of ``folder`` (``group_stats``) and write ``stats.json`` and
    ``stats.png`` there."""
    folder = Path(folder)
    stats, fractions, per_token = group_stats(folder, ids)
    write_json(folder / "stats.json", stats)
    values = np.repeat(np.arange(len(per_token)), per_token)
    mean = stats["visible_fraction_mean"]
    left = histogram_panel(fractions, bins=np.linspace(0, 1, 41), title=(
        f"visible-token fraction |VST|/N (N={stats['tokens']}, {len(fractions)} views, "
        f"mean {mean:.3f})" if mean is not None else "visible-token fraction: no views"),
        marks={"1/3": 1 / 3, **({"mean": mean} if mean is not None else {})})
    logs = np.log10(values[values > 0]) if len(values) else np.zeros(0)
    right = histogram_panel(logs, bins=np.linspace(0, max(1.0, float(logs.max(initial=0))) + 1e-9, 41),
                            title="log10 visible points per VST token "
                                  f"(median {stats['points_per_vst_token']['p50']})")
    write_png(folder / "stats.png", side_by_side([left, right]))
    return stats
