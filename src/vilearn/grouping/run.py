"""Group a whole encoded dataset: every ok shape, every view, every token count; resumable.

Reads the manifest row by row (nothing is listed or held beyond one shape), the latents that
``vilearn encode`` wrote (posterior means, object frame) and each view's ``visible_points``.
A shape whose groups file exists and matches its token count and view count is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vilearn.data.dataset import PreparedDataset
from vilearn.data.shards import Shard
from vilearn.grouping.groups import Groups, group_shape
from vilearn.grouping.store import groups_path, is_complete, save_groups
from vilearn.io import clean_stale_tmp
from vilearn.vae.encode import latents_dir, read_latents
from vilearn.vae.identity import VAEIdentity, find_latents


@dataclass
class GroupSummary:
    grouped: int = 0  # shape x token-count files written now
    skipped: int = 0  # already complete
    failed: dict[str, str] = field(default_factory=dict)  # "id@N" -> reason


def token_counts(root: str | Path, key: str | VAEIdentity) -> list[int]:
    """The token counts encoded in ``latents/<key>`` (its numeric folders)."""
    folder = latents_dir(root, key, 0).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no latents (run 'vilearn encode {root} --vae ...' first)")
    counts = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not counts:
        raise FileNotFoundError(f"{folder}: no token-count folders (run 'vilearn encode' first)")
    return counts


def view_points(data: PreparedDataset, shape_id: str, num_views: int) -> list[np.ndarray]:
    """Each view's visible points (P_k, 3) float32, read without loading the images."""
    return [data.view(shape_id, k, ("visible_points",))["visible_points"].astype(np.float32)
            for k in range(num_views)]


def group_one(vae, data: PreparedDataset, vae_name: str, num_tokens: int, shape_id: str,
              num_views: int, max_bytes: int | None = None) -> Groups:
    """Compute (not store) one shape's grouping from its stored latents and views."""
    path = latents_dir(data.root, vae_name, num_tokens) / f"{shape_id}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no latents for shape {shape_id!r}")
    mean = read_latents(path)["mean"]
    if mean.shape[0] != num_tokens:
        raise ValueError(f"{path}: {mean.shape[0]} tokens, expected {num_tokens}")
    return group_shape(vae, mean, view_points(data, shape_id, num_views), max_bytes)


@torch.no_grad()
def group_dataset(root: str | Path, vae, identity: VAEIdentity, tokens: list[int] | None = None,
                  max_bytes: int | None = None, split: str | None = None, shard: Shard | None = None,
                  on_shape: Callable[[str, int, str], None] | None = None) -> GroupSummary:
    """Write ``latents/<key>/<N>/groups/<id>.npz`` for every ok shape (of ``shard``) and token
    count, with ``vae`` (whose identity is ``identity``: the latents folder must be its own).

    ``tokens`` defaults to every encoded count. ``on_shape(id, N, outcome)`` is called per
    shape and count with outcome "grouped", "skipped" or "failed". A shape without latents or
    with an unreadable file fails alone (reason, naming the file, in the summary); the others go on.
    """
    data = PreparedDataset(root)
    find_latents(root, identity)
    vae_name = identity.key
    tokens = sorted(set(tokens or token_counts(root, vae_name)))
    for n in tokens:
        if not latents_dir(root, vae_name, n).is_dir():
            raise FileNotFoundError(f"{latents_dir(root, vae_name, n)}: no latents at {n} tokens "
                                    f"(run 'vilearn encode {root} --vae ... --tokens {n}')")
    clean_stale_tmp(*(groups_path(root, vae_name, n, "x").parent for n in tokens))
    summary = GroupSummary()
    for row in data.rows(split):
        shape_id, num_views = row["id"], int(row.get("views", 0))
        if shard is not None and not shard.owns(shape_id):
            continue
        for n in tokens:
            path = groups_path(root, vae_name, n, shape_id)
            if is_complete(path, n, num_views):
                summary.skipped += 1
                outcome = "skipped"
            else:
                try:
                    save_groups(path, group_one(vae, data, vae_name, n, shape_id, num_views, max_bytes))
                    summary.grouped += 1
                    outcome = "grouped"
                except (FileNotFoundError, KeyError, ValueError) as error:
                    summary.failed[f"{shape_id}@{n}"] = str(error)
                    outcome = "failed"
            if on_shape:
                on_shape(shape_id, n, outcome)
    return summary
