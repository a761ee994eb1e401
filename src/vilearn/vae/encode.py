"""Encode a prepared dataset into latents, once per shape and token count.

Layout (design.md's latent contract)::

    DATASET/latents/<vae-name>/<N>/<id>.safetensors   mean (N, C), logvar (N, C),
                                                      anchors (N, 3), anchor_index (N,) int64
    DATASET/latents/<vae-name>/<N>/stats.json          per-channel mean / std of the means
    DATASET/latents/<vae-name>/vae.json                which weights and settings made them

Token order is the FPS pick order of the shape's encoder input (a deterministic subset of
``surface.npz``); it never changes once written (VST indices refer to it). FPS runs once per
shape with the largest N; smaller N use its prefix, which is exactly their own FPS. Existing
files are kept (the command resumes); each file is written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vilearn.io import read_json, save_safetensors, write_json
from vilearn.vae.data import load_surface, read_manifest
from vilearn.vae.fps import fps_indices

LATENT_KEYS = ("mean", "logvar", "anchors", "anchor_index")


def latents_dir(dataset: str | Path, vae_name: str, num_tokens: int) -> Path:
    return Path(dataset) / "latents" / vae_name / str(num_tokens)


def encoder_input(surface: np.ndarray, num_points: int) -> np.ndarray:
    """A deterministic subset (fixed seed) of a shape's surface samples: (min(S, P), 6)."""
    if len(surface) <= num_points:
        return surface
    return surface[np.sort(np.random.default_rng(0).choice(len(surface), num_points, False))]


@torch.no_grad()
def encode_shape(vae, surface: np.ndarray, tokens: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """One shape's latents for each token count: {N: {mean, logvar, anchors, anchor_index}}."""
    param = next(vae.parameters())
    surf = torch.from_numpy(surface)[None].to(device=param.device, dtype=param.dtype)
    order = fps_indices(surf[..., :3], max(tokens))
    out = {}
    for n in tokens:
        enc = vae.encode(surf, anchor_index=order[:, :n])
        out[n] = {"mean": enc.posterior.mean[0].float(), "logvar": enc.posterior.logvar[0].float(),
                  "anchors": enc.anchors[0].float(), "anchor_index": enc.anchor_index[0]}
    return out


def read_latents(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    data = load_file(str(path))
    missing = [k for k in LATENT_KEYS if k not in data]
    if missing:
        raise KeyError(f"{path}: not a latents file (missing {', '.join(missing)})")
    return data


def channel_stats(folder: Path) -> dict:
    """Per-channel mean and std of the posterior means of every shape in ``folder``."""
    total, total_sq, count, shapes = None, None, 0, 0
    for path in sorted(folder.glob("*.safetensors")):
        mean = read_latents(path)["mean"].double()
        total = mean.sum(0) if total is None else total + mean.sum(0)
        total_sq = mean.square().sum(0) if total_sq is None else total_sq + mean.square().sum(0)
        count += mean.shape[0]
        shapes += 1
    if not shapes:
        raise ValueError(f"{folder}: no latents to summarise")
    mu = total / count
    std = (total_sq / count - mu.square()).clamp_min(0).sqrt()
    all_std = float((total_sq.sum() / (count * len(mu)) - mu.mean() ** 2).clamp_min(0).sqrt())
    return {"shapes": shapes, "tokens_total": count, "mean": mu.tolist(), "std": std.tolist(),
            "global_mean": float(mu.mean()), "global_std": all_std}


def encode_dataset(dataset: str | Path, vae, vae_name: str, tokens: list[int],
                   surface_points: int = 8192, split: str | None = None,
                   on_shape: Callable[[str, bool], None] | None = None) -> dict[int, dict]:
    """Encode every ok shape (of ``split``, or all); returns the stats per token count.

    ``on_shape(id, encoded)`` is called after each shape (encoded=False when all its files
    existed already), for progress bars.
    """
    dataset = Path(dataset)
    tokens = sorted(set(tokens))
    if not tokens or tokens[0] < 1:
        raise ValueError(f"token counts must be positive, got {tokens}")
    meta_path = dataset / "latents" / vae_name / "vae.json"
    meta = {"vae_config": _config(vae), "surface_points": surface_points}
    if meta_path.is_file() and read_json(meta_path)["surface_points"] != surface_points:
        raise ValueError(f"{meta_path}: these latents were made from "
                         f"{read_json(meta_path)['surface_points']} surface points, not "
                         f"{surface_points}; use the same --surface-points or a new VAE name")
    write_json(meta_path, meta)
    for row in read_manifest(dataset, split):
        shape_id = row["id"]
        todo = [n for n in tokens
                if not (latents_dir(dataset, vae_name, n) / f"{shape_id}.safetensors").is_file()]
        if todo:
            surface = encoder_input(load_surface(dataset, shape_id), surface_points)
            if len(surface) < max(todo):
                raise ValueError(f"shape {shape_id}: {len(surface)} surface points, fewer than "
                                 f"{max(todo)} tokens")
            for n, tensors in encode_shape(vae, surface, todo).items():
                save_safetensors(latents_dir(dataset, vae_name, n) / f"{shape_id}.safetensors",
                                 tensors)
        if on_shape:
            on_shape(shape_id, bool(todo))
    stats = {}
    for n in tokens:
        folder = latents_dir(dataset, vae_name, n)
        stats[n] = {"vae": vae_name, "tokens": n, **channel_stats(folder)}
        write_json(folder / "stats.json", stats[n])
    return stats


def _config(vae) -> dict:
    from vilearn.config import to_dict

    return to_dict(vae.config)
