"""Small run-time helpers shared by the trainers: precision, per-step seeds, git revision."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a bf16-capable GPU, else ``no`` (CPU autocast is slow and lossy)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def step_seed(seed: int, step: int, *salt: int) -> int:
    """A 62-bit seed that depends only on (seed, step, salt): makes every step replayable."""
    return int(np.random.default_rng([seed, step, *salt]).integers(2**62))


def git_commit() -> str | None:
    """The git revision of the checkout this package runs from, when it is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
