"""The encoder's input for N tokens: which surface samples it reads and which become tokens.

A VAE config says what its encoder expects (``VAEConfig.point_feats``, ``downsample_ratio``,
``pc_size``, ``pc_sharpedge_size``; hy3dshape's names), and ``EncoderInput`` turns it into
counts. Two kinds:

- fixed ratio (Hunyuan3D's VAEs, ``downsample_ratio`` r > 0): N tokens read N * r points. A
  fraction f = pc_sharpedge_size / (pc_size + pc_sharpedge_size) of the tokens, N_s =
  round(N f), are anchored on sharp-edge samples and read N_s * r of them; the other N_u = N -
  N_s tokens read N_u * r uniform samples. Tokens are the FPS picks within each set, uniform
  tokens first, as hy3dshape 2.1's ``PointCrossAttentionEncoder.sample_points_and_latents``
  orders its queries (it concatenates the FPS picks of the uniform set and of the sharp set, and
  the points of both as the keys). Where hy3dshape draws a random subset and a random FPS start
  at every call, the subset here is drawn by the caller's generator and FPS starts at the set's
  first point, so a shape always encodes to the same tokens in the same order. A shape without
  sharp edges (a sphere) has no sharp samples: all its N tokens come from the uniform set.
- all points (our VAEs, ``downsample_ratio`` 0): the caller says how many uniform samples to
  read; tokens are the FPS picks among all of them (the first N' of N are the N'-token picks).

Each point is xyz, then the normal (``point_feats`` >= 3), then the sharp-edge flag (1 on sharp
samples, 0 on uniform ones; ``point_feats`` 4), as hy3dshape's data loader builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vilearn.vae.config import VAEConfig
from vilearn.vae.fps import fps_indices


class InputError(ValueError):
    """A shape's stored samples cannot make the input a VAE expects; the message says why."""


@dataclass(frozen=True)
class EncoderInput:
    """What a VAE's encoder reads, in counts. ``all_points``: the point count of the all-points
    kind (0 for fixed-ratio VAEs)."""

    point_feats: int
    points_per_token: int = 0  # 0: the all-points kind
    sharp_fraction: float = 0.0
    all_points: int = 8192

    def __post_init__(self) -> None:
        if not 0.0 <= self.sharp_fraction <= 1.0:
            raise ValueError(f"sharp fraction must be in [0, 1], got {self.sharp_fraction}")
        if self.points_per_token < 0 or (not self.points_per_token and self.all_points < 1):
            raise ValueError("points per token must be >= 0, and the point count positive")

    @classmethod
    def of(cls, config: VAEConfig, points_per_token: int | None = None,
           sharp_fraction: float | None = None, all_points: int = 8192) -> EncoderInput:
        """The input ``config`` expects, with optional overrides of its ratio and mix."""
        pool = config.pc_size + config.pc_sharpedge_size
        ratio = config.downsample_ratio if points_per_token is None else points_per_token
        if sharp_fraction is None:
            sharp_fraction = config.pc_sharpedge_size / pool if pool else 0.0
        return cls(config.point_feats, ratio, sharp_fraction if ratio else 0.0,
                   0 if ratio else all_points)

    def tokens(self, n_tokens: int, has_sharp: bool = True) -> tuple[int, int]:
        """(uniform tokens, sharp tokens) of ``n_tokens``."""
        if not self.points_per_token or not has_sharp:
            return n_tokens, 0
        sharp = round(n_tokens * self.sharp_fraction)
        return n_tokens - sharp, sharp

    def points(self, n_tokens: int, has_sharp: bool = True) -> tuple[int, int]:
        """(uniform points, sharp points) read for ``n_tokens``."""
        if not self.points_per_token:
            return self.all_points, 0
        uniform, sharp = self.tokens(n_tokens, has_sharp)
        return uniform * self.points_per_token, sharp * self.points_per_token

    def describe(self) -> str:
        feats = {0: "xyz", 3: "xyz + normal", 4: "xyz + normal + sharp flag"}[self.point_feats]
        if not self.points_per_token:
            return f"{self.all_points} uniform points ({feats}), tokens by FPS over all of them"
        return (f"{self.points_per_token} points per token, {self.sharp_fraction:.0%} of them "
                f"on sharp edges ({feats})")


def _features(points: np.ndarray, normals: np.ndarray, flag: float, point_feats: int) -> np.ndarray:
    columns = [points]
    if point_feats >= 3:
        columns.append(normals)
    if point_feats == 4:
        columns.append(np.full((len(points), 1), flag, np.float32))
    return np.concatenate(columns, axis=1).astype(np.float32)


def _subset(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(count) if size >= count else np.sort(rng.choice(count, size, replace=False))


def build_input(surface: dict[str, np.ndarray], n_tokens: int, spec: EncoderInput,
                rng: np.random.Generator, name: str = "shape") -> tuple[np.ndarray, np.ndarray]:
    """One shape's encoder input for ``n_tokens`` tokens.

    Args:
        surface: the shape's ``surface.npz`` arrays: points, normals (S, 3) and, from format 3
            on, sharp_points, sharp_normals (K, 3).
        rng: draws the subsets (seed it for a reproducible input).
        name: the shape, for error messages.
    Returns:
        points (P, 3 + point_feats) float32 and anchor_index (n_tokens,) int64, the token order.
    Raises:
        InputError: too few stored samples for this input (the message names both counts).
    """
    has_sharp = len(surface.get("sharp_points", ())) > 0
    if spec.points_per_token and spec.sharp_fraction > 0 and "sharp_points" not in surface:
        raise InputError(f"shape {name}: no sharp-edge samples stored (prepared before format 3), "
                         f"but the VAE reads {spec.describe()}")
    want_uniform, want_sharp = spec.points(n_tokens, has_sharp)
    stored_uniform, stored_sharp = len(surface["points"]), len(surface.get("sharp_points", ()))
    if spec.points_per_token and (stored_uniform < want_uniform or stored_sharp < want_sharp):
        raise InputError(f"shape {name}: {stored_uniform} uniform and {stored_sharp} sharp-edge "
                         f"samples stored, fewer than the {want_uniform} + {want_sharp} that "
                         f"{n_tokens} tokens read ({spec.describe()})")
    uniform = _subset(stored_uniform, want_uniform, rng)
    parts = [_features(surface["points"][uniform], surface["normals"][uniform], 0.0, spec.point_feats)]
    if want_sharp:
        sharp = _subset(stored_sharp, want_sharp, rng)
        parts.append(_features(surface["sharp_points"][sharp], surface["sharp_normals"][sharp], 1.0,
                               spec.point_feats))
    if n_tokens > len(parts[0]):
        raise InputError(f"shape {name}: {len(parts[0])} surface points, fewer than {n_tokens} tokens")
    tokens_uniform, tokens_sharp = spec.tokens(n_tokens, has_sharp)
    anchors = [fps_indices(torch.from_numpy(parts[0][:, :3]), tokens_uniform).numpy()]
    if tokens_sharp:
        picks = fps_indices(torch.from_numpy(parts[1][:, :3]), tokens_sharp).numpy()
        anchors.append(len(parts[0]) + picks)
    return np.concatenate(parts), np.concatenate(anchors).astype(np.int64)
