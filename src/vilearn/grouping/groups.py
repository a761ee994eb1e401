"""VST / IST of a shape's views: de-duplicate each view's point-to-token assignment.

For view k with assignment a (P_k,), token j is in the VST iff some point chose it:
``hits[k, j] = #{i : a_i = j}`` and ``visible[k] = hits[k] > 0``; the IST is the complement.
A view without visible points has an all-False row and ``visible_points[k] == 0`` (the flag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vilearn.grouping.assign import assign_to_keys


@dataclass
class Groups:
    """One shape's grouping at one token count (docs/design.md, "Latents, groups and features").

    visible (V, N) bool: token j is in view k's VST; hits (V, N) int32: visible points whose
    argmax is token j; visible_points (V,) int64: points used per view (0 = degenerate view).
    """

    visible: np.ndarray
    hits: np.ndarray
    visible_points: np.ndarray

    def __post_init__(self) -> None:
        v, n = self.visible.shape if self.visible.ndim == 2 else (None, None)
        if v is None or self.visible.dtype != np.bool_:
            raise ValueError(f"visible must be (V, N) bool, got {self.visible.shape} {self.visible.dtype}")
        if self.hits.shape != (v, n) or self.visible_points.shape != (v,):
            raise ValueError(f"hits {self.hits.shape} must be {(v, n)} and visible_points "
                             f"{self.visible_points.shape} must be {(v,)}")

    @property
    def num_views(self) -> int:
        return self.visible.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.visible.shape[1]

    @property
    def empty_views(self) -> np.ndarray:
        """(V,) bool: views with no visible point (their VST is empty by definition)."""
        return self.visible_points == 0

    def vst(self, view: int) -> np.ndarray:
        """Sorted indices of view ``view``'s visible tokens, (|VST|,) int64."""
        return np.flatnonzero(self.visible[view])

    def ist(self, view: int) -> np.ndarray:
        """Sorted indices of the invisible tokens, (N - |VST|,) int64."""
        return np.flatnonzero(~self.visible[view])

    def visible_fraction(self) -> np.ndarray:
        """(V,) float64 |VST| / N; NaN for views without visible points."""
        frac = self.visible.sum(axis=1) / self.num_tokens
        return np.where(self.empty_views, np.nan, frac)


def dedup(assignment: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """assignment (P,) int64 in [0, N) -> visible (N,) bool, hits (N,) int32."""
    if assignment.numel() and (assignment.min() < 0 or assignment.max() >= num_tokens):
        raise ValueError(f"assignment out of range [0, {num_tokens})")
    hits = torch.bincount(assignment.reshape(-1).cpu(), minlength=num_tokens)
    return hits > 0, hits.to(torch.int32)


@torch.no_grad()
def group_shape(vae, latents: torch.Tensor, view_points: Sequence[np.ndarray | torch.Tensor],
                max_bytes: int | None = None, chunk: int | None = None) -> Groups:
    """VST per view for one shape.

    Args:
        vae: a ``VecSetVAE`` (ours or a loaded Hunyuan3D-2 one).
        latents: (N, C) the shape's latent tokens (the posterior mean, in the stored order).
        view_points: V arrays (P_k, 3) of visible points in the latents' frame; P_k may be 0.
    Returns:
        ``Groups`` with V rows.
    """
    if latents.ndim != 2:
        raise ValueError(f"latents must be (N, C), got {tuple(latents.shape)}")
    param = next(vae.parameters())
    n = latents.shape[0]
    keys = vae.geo_decoder.attention_keys(vae.decode(latents[None].to(param.device, param.dtype)))
    visible = np.zeros((len(view_points), n), bool)
    hits = np.zeros((len(view_points), n), np.int32)
    counts = np.zeros(len(view_points), np.int64)
    for k, points in enumerate(view_points):
        points = torch.as_tensor(np.asarray(points, np.float32)).reshape(-1, 3)
        counts[k] = len(points)
        if not len(points):
            continue
        assignment = assign_to_keys(vae.geo_decoder, points[None].to(param.device), keys, chunk, max_bytes)
        vis, hit = dedup(assignment[0], n)
        visible[k], hits[k] = vis.numpy(), hit.numpy()
    return Groups(visible, hits, counts)
