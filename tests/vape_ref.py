"""Independent truths and invariants shared by the denoisers' VAPE tests."""

from __future__ import annotations

import math

import numpy as np
import torch


def rotation_matrix(position: float, dim: int, theta: float = 10_000.0) -> np.ndarray:
    """Direct RoPE: block-diagonal 2x2 rotations of pairs (2j, 2j+1) by pos * theta^(-2j/dim)."""
    r = np.zeros((dim, dim))
    for j in range(dim // 2):
        a = position * theta ** (-2 * j / dim)
        r[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = [
            [math.cos(a), -math.sin(a)],
            [math.sin(a), math.cos(a)],
        ]
    return r


def random_visible(batch: int, n: int, seed: int = 2) -> torch.Tensor:
    """(batch, n) bool, about 40% visible, both categories present in every row."""
    g = torch.Generator().manual_seed(seed)
    visible = torch.rand(batch, n, generator=g) < 0.4
    visible[:, 0], visible[:, 1] = True, False
    return visible


def permuted_outputs(model, x, t, cond, visible=None, seed: int = 3):
    """(output of the permuted input, permuted output): equal iff the model is permutation
    equivariant in its shape tokens (permuted together with their visibility)."""
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(x, t, cond, visible=visible)
        out_perm = model(x[:, perm], t, cond, visible=None if visible is None else visible[:, perm])
    return out_perm, out[:, perm]
