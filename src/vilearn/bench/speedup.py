"""Speed-up arithmetic of the convergence benchmark (pure functions, tested on synthetic curves).

speed-up of a variant over the baseline, on one metric =
    steps the baseline needs to reach its own final value
    / steps the variant needs to reach that same value,
where "final value" is the mean of the baseline's last ``average_last`` checkpoints (to damp
noise) and "steps to reach" is the first crossing of the target on the curve, linearly
interpolated between checkpoints. A variant that never reaches it is "not reached" (None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def steps_to_reach(steps: Sequence[float], values: Sequence[float], target: float,
                   higher_is_better: bool) -> float | None:
    """The first step at which the curve reaches ``target`` (interpolated), or None.

    steps (K,) increasing, values (K,). Reaching means >= target when higher is better, else <=.
    A curve that starts at or past the target reaches it at its first checkpoint.
    """
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    if steps.shape != values.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError(f"steps and values must be equal-length 1-d, got {steps.shape}, {values.shape}")
    sign = 1.0 if higher_is_better else -1.0
    gap = sign * (values - target)  # >= 0 once reached
    reached = np.flatnonzero(gap >= 0)
    if len(reached) == 0:
        return None
    k = int(reached[0])
    if k == 0:
        return float(steps[0])
    before, after = gap[k - 1], gap[k]  # before < 0 <= after
    fraction = -before / (after - before)
    return float(steps[k - 1] + fraction * (steps[k] - steps[k - 1]))


def speedup(steps: Sequence[float], baseline: Sequence[float], variant: Sequence[float],
            higher_is_better: bool, average_last: int = 2) -> dict:
    """``{"target", "baseline_steps", "variant_steps", "speedup"}``; speed-up None = not reached."""
    if average_last < 1:
        raise ValueError(f"average_last must be >= 1, got {average_last}")
    target = float(np.mean(np.asarray(baseline, float)[-average_last:]))
    base_steps = steps_to_reach(steps, baseline, target, higher_is_better)
    variant_steps = steps_to_reach(steps, variant, target, higher_is_better)
    ratio = None if variant_steps is None or base_steps is None else base_steps / variant_steps
    return {"target": target, "baseline_steps": base_steps, "variant_steps": variant_steps,
            "speedup": ratio}
