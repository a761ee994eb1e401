"""Learning-rate schedules as pure functions of the step (nothing to save or restore)."""

from __future__ import annotations

import math
from typing import Literal

Decay = Literal["cosine", "linear", "constant"]


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay: Decay = "cosine",
              min_ratio: float = 0.1) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear warmup, then decay to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown LR decay {decay!r} (cosine, linear or constant)")
    return min_ratio + (1.0 - min_ratio) * shape
