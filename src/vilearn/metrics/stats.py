"""Means with 95% confidence intervals over samples.

The interval is Student's t: mean +- t_{(1 + c) / 2, n - 1} * s / sqrt(n), with s the sample
standard deviation (ddof = 1). It assumes the per-sample scores are independent draws; with a
few hundred held-out views the t interval is close to the normal one, and it stays honest for the
handful of samples a quick run has. NaN entries (a metric undefined for that sample, e.g. the
depth error of a generation that covers no pixel of the mask) are left out and counted in
``missing``, so a reader sees how many samples a mean stands on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """mean, [low, high] confidence interval, n samples used, missing (NaN) samples left out.

    low = high = NaN when n < 2 (no spread to estimate); everything is NaN when n = 0.
    """

    mean: float
    low: float
    high: float
    n: int
    missing: int

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean and Student-t confidence interval of ``values`` (n,), NaNs left out; infinities are an error."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = np.asarray(list(values), np.float64).reshape(-1)
    if np.isinf(array).any():
        raise ValueError("values: infinite entries have no mean; use NaN for undefined samples")
    finite = array[~np.isnan(array)]
    n, missing = len(finite), len(array) - len(finite)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0, missing)
    mean = float(finite.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, 1, missing)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(finite.std(ddof=1)) / math.sqrt(n)
    return Summary(mean, mean - half, mean + half, n, missing)


def aggregate(results: Iterable[Mapping[str, float]], confidence: float = 0.95) -> dict[str, Summary]:
    """Per-metric ``Summary`` over per-sample result dicts (e.g. from ``evaluate_mesh``).

    A metric absent from some samples counts as missing there. Keys keep first-seen order.
    """
    rows = list(results)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return {key: mean_ci((row.get(key, math.nan) for row in rows), confidence) for key in keys}
