"""The inference partition's ratio. With no ground-truth visibility, the first ceil(N r) tokens
are treated as visible (``vilearn.dit.vape.fixed_partition``, set by ``DiTConfig.visible_ratio``);
r = 1/3 is the paper's value, and ``measured_visible_ratio`` gives ours: the dataset's mean
visible-token fraction recorded in ``groups/stats.json`` (``visible_fraction_mean``)."""

from __future__ import annotations

from pathlib import Path

from vilearn.grouping.store import groups_dir
from vilearn.io import read_json

DEFAULT_VISIBLE_RATIO = 1 / 3


def measured_visible_ratio(root: str | Path, vae_name: str, num_tokens: int) -> float:
    """The mean visible-token fraction recorded by ``vilearn group`` for these latents."""
    path = groups_dir(root, vae_name, num_tokens) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no grouping statistics (run 'vilearn group {root} ...')")
    value = read_json(path).get("visible_fraction_mean")
    if value is None:
        raise ValueError(f"{path}: no visible_fraction_mean (no view had visible points)")
    return float(value)
