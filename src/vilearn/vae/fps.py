"""Deterministic farthest point sampling: the token order of every latent comes from here.

Token j of a shape is anchored at the j-th FPS pick, starting from input point 0. Because
FPS is greedy, the first N' picks of an N-point run are exactly the N'-point run: the token
sets of a shape are nested (256 tokens = the first 256 of the 1024), which is what
progressive training (256 -> 1024 -> 2048) wants. Vanilla FPS (``fpsample.fps_sampling``) is
used, not the bucket variants, whose picks differ from exact FPS.
"""

from __future__ import annotations

import numpy as np
import torch


def fps_indices(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Indices of ``num_samples`` farthest points of each cloud, in pick order.

    Args:
        points: (B, P, 3) or (P, 3), any device and float dtype.
    Returns:
        (B, num_samples) or (num_samples,) int64 on ``points.device``.
    """
    if points.ndim == 2:
        return fps_indices(points[None], num_samples)[0]
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, P, 3), got {tuple(points.shape)}")
    if not 1 <= num_samples <= points.shape[1]:
        raise ValueError(f"cannot pick {num_samples} tokens from {points.shape[1]} surface points")
    import fpsample  # here, not at import: training imports this package without encoding anything

    clouds = points.detach().float().cpu().numpy()
    picks = [fpsample.fps_sampling(np.ascontiguousarray(c), num_samples, start_idx=0)
             for c in clouds]
    return torch.from_numpy(np.stack(picks).astype(np.int64)).to(points.device)


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, P, D), index (B, N) -> (B, N, D)."""
    return torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))
