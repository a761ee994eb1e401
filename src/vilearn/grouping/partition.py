"""The inference partition: with no ground-truth visibility, the first ceil(N r) tokens are
treated as visible (the paper's fixed partition, r = 1/3). r can be set to the dataset's
measured mean visible fraction (``groups/stats.json``'s ``visible_fraction_mean``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vilearn.grouping.store import groups_dir
from vilearn.io import read_json

DEFAULT_VISIBLE_RATIO = 1 / 3


def visible_count(num_tokens: int, ratio: float = DEFAULT_VISIBLE_RATIO) -> int:
    """ceil(N r): 683 of 2048 tokens at r = 1/3 (the paper's example)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"visible ratio must be in [0, 1], got {ratio}")
    # The epsilon keeps exact products (N = 3k, r = 1/3) from rounding up a float ulp.
    return min(num_tokens, math.ceil(num_tokens * ratio - 1e-9))


def inference_partition(num_tokens: int, ratio: float = DEFAULT_VISIBLE_RATIO) -> torch.Tensor:
    """(N,) bool: True for the first ceil(N r) tokens (treated as VST), False for the rest."""
    visible = torch.zeros(num_tokens, dtype=torch.bool)
    visible[:visible_count(num_tokens, ratio)] = True
    return visible


def measured_visible_ratio(root: str | Path, vae_name: str, num_tokens: int) -> float:
    """The mean visible-token fraction recorded by ``vilearn group`` for these latents."""
    path = groups_dir(root, vae_name, num_tokens) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no grouping statistics (run 'vilearn group {root} ...')")
    value = read_json(path).get("visible_fraction_mean")
    if value is None:
        raise ValueError(f"{path}: no visible_fraction_mean (no view had visible points)")
    return float(value)
