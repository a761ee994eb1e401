"""Encode a prepared dataset into latents, once per shape and token count.

Layout (docs/design.md, "Latents, groups and features"), under the VAE's identity
(``vilearn.vae.identity``)::

    DATASET/latents/<name>-<hash8>/vae.json               which VAE (hash, path) and which
                                                          encoder input made them
    DATASET/latents/<name>-<hash8>/<N>/<id>.safetensors   mean (N, C), logvar (N, C),
                                                          anchors (N, 3), anchor_index (N,) int64
    DATASET/latents/<name>-<hash8>/<N>/stats.json         per-channel mean / std of the means

The encoder's input is the one its VAE config expects (``vilearn.vae.input``: points per
token, the uniform / sharp-edge mix, the sharp flag), a deterministic subset (fixed seed) of
``surface.npz``. Token order is its FPS pick order and never changes once written (VST indices
refer to it); for our VAEs (all points read) the first N' tokens of N are the N'-token ones.
A dataset that cannot make that input (no sharp-edge samples, too few points) is refused at its
first shape, naming the dataset, the VAE and the counts. Existing files are kept (the command
resumes); each file is written atomically. A shape whose files cannot be read is recorded as
failed, with the file and the reason, and the others go on; an unreadable latents file is
encoded again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vilearn.data.dataset import PreparedDataset
from vilearn.data.shards import Shard
from vilearn.io import CorruptFileError, clean_stale_tmp, read_safetensors, save_safetensors, write_json
from vilearn.vae.data import read_manifest
from vilearn.vae.identity import VAEIdentity, claim_latents, latents_root
from vilearn.vae.input import EncoderInput, InputError, build_input

LATENT_KEYS = ("mean", "logvar", "anchors", "anchor_index")


def latents_dir(dataset: str | Path, key: str | VAEIdentity, num_tokens: int) -> Path:
    """``DATASET/latents/<key>/<N>``; ``key`` is a ``VAEIdentity`` or its ``key``."""
    return latents_root(dataset, key) / str(num_tokens)


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
    """One shape's latents file: mean, logvar (N, C), anchors (N, 3), anchor_index (N,).

    Raises:
        FileNotFoundError: no such file. CorruptFileError: unreadable or missing a tensor.
    """
    data = read_safetensors(path)
    missing = [k for k in LATENT_KEYS if k not in data]
    if missing:
        raise CorruptFileError(f"{path}: not a latents file (missing {', '.join(missing)})")
    return data


class ChannelStats:
    """Running per-channel mean and std of posterior means (N, C), in float64."""

    def __init__(self):
        self.total = self.total_sq = None
        self.count = self.shapes = 0

    def add(self, mean: torch.Tensor) -> None:
        mean = mean.double()
        self.total = mean.sum(0) if self.total is None else self.total + mean.sum(0)
        square = mean.square().sum(0)
        self.total_sq = square if self.total_sq is None else self.total_sq + square
        self.count += mean.shape[0]
        self.shapes += 1

    def to_dict(self, where: Path) -> dict:
        if not self.shapes:
            raise ValueError(f"{where}: no latents to summarise")
        mu = self.total / self.count
        std = (self.total_sq / self.count - mu.square()).clamp_min(0).sqrt()
        all_std = float((self.total_sq.sum() / (self.count * len(mu)) - mu.mean() ** 2).clamp_min(0).sqrt())
        return {"shapes": self.shapes, "tokens_total": self.count, "mean": mu.tolist(),
                "std": std.tolist(), "global_mean": float(mu.mean()), "global_std": all_std}


@dataclass
class EncodeSummary:
    encoded: int = 0  # shapes with new files
    kept: int = 0  # shapes whose files all existed and read back
    redone: list[str] = field(default_factory=list)  # unreadable latents files encoded again
    failed: dict[str, str] = field(default_factory=dict)  # shape id -> reason (naming the file)
    stats: dict[int, dict] = field(default_factory=dict)  # per token count (stats.json)


def encode_dataset(dataset: str | Path, vae, identity: VAEIdentity, tokens: list[int],
                   surface_points: int = 8192, split: str | None = None, shard: Shard | None = None,
                   on_shape: Callable[[str, str], None] | None = None,
                   points_per_token: int | None = None,
                   sharp_fraction: float | None = None) -> EncodeSummary:
    """Encode every ok shape (of ``split``, or all) with ``vae`` (whose identity is ``identity``)
    and write each token count's ``stats.json`` over those shapes.

    The input is what the VAE's config expects (``EncoderInput.of``): ``surface_points`` is the
    point count of an all-points VAE; ``points_per_token`` and ``sharp_fraction`` override a
    fixed-ratio VAE's. Existing latents are read back (the statistics need them): an
    unreadable one is encoded again. ``on_shape(id, outcome)`` is called after each shape,
    outcome "encoded", "kept" or "failed", for progress bars. Latents of another VAE in the
    identity's folder, or made from another encoder input, are refused (``LatentsError``). With
    ``shard`` only its shapes are encoded and no statistics are written (they need every shape:
    an unsharded run afterwards reads the latents back and writes them).
    """
    dataset = Path(dataset)
    tokens = sorted(set(tokens))
    if not tokens or tokens[0] < 1:
        raise ValueError(f"token counts must be positive, got {tokens}")
    spec = EncoderInput.of(vae.config, points_per_token, sharp_fraction, surface_points)
    root = claim_latents(dataset, identity, _config(vae), {
        "surface_points": spec.all_points or None,
        "input": {**dataclasses.asdict(spec), "description": spec.describe()}})
    clean_stale_tmp(root, *(latents_dir(dataset, identity, n) for n in tokens))
    data = PreparedDataset(dataset)
    summary, stats = EncodeSummary(), {n: ChannelStats() for n in tokens}
    for row in read_manifest(dataset, split):
        shape_id, todo, means = row["id"], [], {}
        if shard is not None and not shard.owns(shape_id):
            continue
        for n in tokens:
            path = latents_dir(dataset, identity, n) / f"{shape_id}.safetensors"
            if path.is_file():
                try:
                    means[n] = read_latents(path)["mean"]
                    continue
                except CorruptFileError:
                    summary.redone.append(str(path))
            todo.append(n)
        outcome = "encoded" if todo else "kept"
        if todo:
            try:
                latents = encode_shape(vae, data.surface(shape_id), todo, spec, shape_id)
                for n, tensors in latents.items():
                    save_safetensors(latents_dir(dataset, identity, n) / f"{shape_id}.safetensors",
                                     tensors)
                    means[n] = tensors["mean"]
            except InputError as error:  # the dataset, not this shape, does not fit the VAE
                raise ValueError(f"dataset {dataset} does not fit VAE {identity.key!r}: {error}") from error
            except (CorruptFileError, FileNotFoundError) as error:
                summary.failed[shape_id] = str(error)
                outcome = "failed"
        if outcome != "failed":
            for n, mean in means.items():
                stats[n].add(mean)
        summary.encoded += outcome == "encoded"
        summary.kept += outcome == "kept"
        if on_shape:
            on_shape(shape_id, outcome)
    if shard is not None:
        return summary
    for n in tokens:
        if stats[n].shapes:  # else every shape failed: nothing to summarise, the summary says why
            folder = latents_dir(dataset, identity, n)
            summary.stats[n] = {"vae": identity.key, "tokens": n, **stats[n].to_dict(folder)}
            write_json(folder / "stats.json", summary.stats[n])
    return summary


def _config(vae) -> dict:
    from vilearn.config import to_dict

    return to_dict(vae.config)
