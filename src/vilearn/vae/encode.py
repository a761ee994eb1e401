"""Encode a prepared dataset into latents, once per shape and token count.

Layout (design.md's latent contract)::

    DATASET/latents/<vae-name>/<N>/<id>.safetensors   mean (N, C), logvar (N, C),
                                                      anchors (N, 3), anchor_index (N,) int64
    DATASET/latents/<vae-name>/<N>/stats.json          per-channel mean / std of the means
    DATASET/latents/<vae-name>/vae.json                which weights and settings made them

The encoder's input is the one its VAE config expects (``vilearn.vae.input``: points per
token, the uniform / sharp-edge mix, the sharp flag), a deterministic subset (fixed seed) of
``surface.npz``. Token order is its FPS pick order and never changes once written (VST indices
refer to it); for our VAEs (all points read) the first N' tokens of N are the N'-token ones.
A dataset that cannot make that input (no sharp-edge samples, too few points) is refused at its
first shape, naming the dataset, the VAE and the counts. Existing files are kept (the command
resumes); each file is written atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vilearn.data.dataset import PreparedDataset
from vilearn.io import read_json, save_safetensors, write_json
from vilearn.vae.data import read_manifest
from vilearn.vae.input import EncoderInput, InputError, build_input

LATENT_KEYS = ("mean", "logvar", "anchors", "anchor_index")


def latents_dir(dataset: str | Path, vae_name: str, num_tokens: int) -> Path:
    return Path(dataset) / "latents" / vae_name / str(num_tokens)


@torch.no_grad()
def encode_shape(vae, surface: dict[str, np.ndarray], tokens: list[int], spec: EncoderInput,
                 name: str = "shape") -> dict[int, dict[str, torch.Tensor]]:
    """One shape's latents for each token count: {N: {mean, logvar, anchors, anchor_index}}.

    ``surface``: its ``surface.npz`` arrays; the input for each N is ``build_input``'s, drawn
    with a fixed seed (``anchor_index`` indexes that input).
    """
    param = next(vae.parameters())
    out = {}
    for n in tokens:
        points, anchor_index = build_input(surface, n, spec, np.random.default_rng(0), name)
        surf = torch.from_numpy(points)[None].to(device=param.device, dtype=param.dtype)
        enc = vae.encode(surf, anchor_index=torch.from_numpy(anchor_index)[None].to(param.device))
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
                   on_shape: Callable[[str, bool], None] | None = None,
                   points_per_token: int | None = None,
                   sharp_fraction: float | None = None) -> dict[int, dict]:
    """Encode every ok shape (of ``split``, or all); returns the stats per token count.

    The input is what the VAE's config expects (``EncoderInput.of``): ``surface_points`` is the
    point count of an all-points VAE; ``points_per_token`` and ``sharp_fraction`` override a
    fixed-ratio VAE's. ``on_shape(id, encoded)`` is called after each shape (encoded=False when
    all its files existed already), for progress bars.
    """
    dataset = Path(dataset)
    tokens = sorted(set(tokens))
    if not tokens or tokens[0] < 1:
        raise ValueError(f"token counts must be positive, got {tokens}")
    spec = EncoderInput.of(vae.config, points_per_token, sharp_fraction, surface_points)
    meta_path = dataset / "latents" / vae_name / "vae.json"
    meta = {"vae_config": _config(vae), "surface_points": spec.all_points or None,
            "input": {**dataclasses.asdict(spec), "description": spec.describe()}}
    if meta_path.is_file() and any(meta_path.parent.glob("*/*.safetensors")):
        old = read_json(meta_path)
        for key in ("surface_points", "input"):
            if key in old and old[key] != meta[key]:
                raise ValueError(f"{meta_path}: these latents were made from another encoder input "
                                 f"({key}: {old[key]} here, {meta[key]} now); use the same "
                                 f"settings or a new VAE name")
    write_json(meta_path, meta)
    data = PreparedDataset(dataset)
    for row in read_manifest(dataset, split):
        shape_id = row["id"]
        todo = [n for n in tokens
                if not (latents_dir(dataset, vae_name, n) / f"{shape_id}.safetensors").is_file()]
        if todo:
            try:
                latents = encode_shape(vae, data.surface(shape_id), todo, spec, shape_id)
            except InputError as error:
                raise ValueError(f"dataset {dataset} does not fit VAE {vae_name!r}: {error}") from error
            for n, tensors in latents.items():
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
