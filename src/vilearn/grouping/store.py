"""Where groupings live and how they are read and written (the trainer reads exactly this).

Layout, next to the latents they index (``vilearn.vae.encode``)::

    DATASET/latents/<vae-name>/<N>/groups/<id>.npz   visible (V, N) bool, hits (V, N) int32,
                                                     visible_points (V,) int64
    DATASET/latents/<vae-name>/<N>/groups/stats.json dataset statistics (``grouping.stats``)
    DATASET/latents/<vae-name>/<N>/groups/stats.png  their histograms

Row k is view k of ``shapes/<id>/views/<k>.npz``; column j is token j of
``latents/<vae-name>/<N>/<id>.safetensors`` (whose order never changes after grouping).
Files are written atomically; a shape's file is complete or absent.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vilearn.grouping.groups import Groups
from vilearn.io import write_npz
from vilearn.vae.encode import latents_dir

GROUP_KEYS = ("visible", "hits", "visible_points")


def groups_dir(root: str | Path, vae_name: str, num_tokens: int) -> Path:
    return latents_dir(root, vae_name, num_tokens) / "groups"


def groups_path(root: str | Path, vae_name: str, num_tokens: int, shape_id: str) -> Path:
    return groups_dir(root, vae_name, num_tokens) / f"{shape_id}.npz"


def save_groups(path: str | Path, groups: Groups) -> None:
    write_npz(path, visible=groups.visible.astype(bool), hits=groups.hits.astype(np.int32),
              visible_points=groups.visible_points.astype(np.int64))


def read_groups(path: str | Path) -> Groups:
    """One groups file; a missing key or a bad shape is an error naming the file."""
    path = Path(path)
    try:
        with np.load(path) as data:
            missing = [k for k in GROUP_KEYS if k not in data.files]
            if missing:
                raise KeyError(f"{path}: not a groups file (missing {', '.join(missing)})")
            arrays = {k: data[k] for k in GROUP_KEYS}
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise ValueError(f"{path}: unreadable groups file ({error})") from error
    try:
        return Groups(**arrays)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def load_groups(root: str | Path, vae_name: str, num_tokens: int, shape_id: str) -> Groups:
    """The grouping of shape ``shape_id`` for the latents ``latents/<vae_name>/<N>``."""
    path = groups_path(root, vae_name, num_tokens, shape_id)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no grouping for shape {shape_id!r} at {num_tokens} tokens "
                                f"(run 'vilearn group {root} --vae ... --tokens {num_tokens}')")
    groups = read_groups(path)
    if groups.num_tokens != num_tokens:
        raise ValueError(f"{path}: {groups.num_tokens} tokens per row, expected {num_tokens}")
    return groups


def is_complete(path: Path, num_tokens: int, num_views: int) -> bool:
    """True when ``path`` holds a readable grouping of ``num_views`` views x ``num_tokens`` tokens."""
    if not path.is_file():
        return False
    try:
        groups = read_groups(path)
    except (KeyError, ValueError):
        return False
    return groups.num_tokens == num_tokens and groups.num_views == num_views
