"""Visibility-Aware Positional Encoding (VAPE): one switch, built once per forward.

VAPE changes only the queries and keys of the double-stream blocks, after QK-norm and before
attention; values, single-stream blocks and the rest of the backbone are untouched. The token
categories are: image tokens and visible shape tokens (VST) are "visible", invisible shape tokens
(IST) are "invisible". Visibility enters as ``visible (B, N) bool`` over the shape tokens.

- ``none``: no positional encoding (the permutation-invariant VecSet baseline).
- ``va-rope``: RoPE (base ``theta`` over the head dimension) whose position is the category:
  visible tokens at m, invisible tokens at n. Only relative rotation enters a logit,
  (R_m q) . (R_n k) = q . (R_{n-m} k), so we rotate the IST by n - m and leave image tokens and
  VST untouched: the logits, hence the outputs, are those of rotating by m and n, for any m, and
  the cost is one rotation of the shape stream's Q/K (none at all for the image tokens).
- ``va-lpe``: learnable e_v, e_i (head dimension, one pair per double-stream block) added to Q
  and K: e_v on image tokens and VST, e_i on IST.
- ``rope``: ordinary sequential RoPE over [image tokens, shape tokens] (the paper's ablation).

At inference there is no ground-truth visibility: ``fixed_partition`` marks the first ceil(N * r)
shape tokens visible (r = 1/3, the paper's fixed partition).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vilearn.dit.config import DiTConfig
from vilearn.dit.math import rope_tables, rotate

QK = tuple[Tensor, Tensor, Tensor, Tensor]


def fixed_partition(n_tokens: int, ratio: float = 1.0 / 3.0, batch: int = 1, device=None) -> Tensor:
    """Inference visibility: the first ceil(n_tokens * ratio) tokens are visible.

    Returns:
        (batch, n_tokens) bool.
    """
    if n_tokens < 0 or batch < 1:
        raise ValueError(
            f"fixed_partition: need n_tokens >= 0 and batch >= 1, got {n_tokens}, {batch}"
        )
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"fixed_partition: ratio must be in [0, 1], got {ratio!r}")
    n_visible = math.ceil(round(n_tokens * ratio, 9))  # round: 300 * (1/3) is 100.00000000000001
    visible = torch.zeros(batch, n_tokens, dtype=torch.bool, device=device)
    visible[:, :n_visible] = True
    return visible


def mask_from_indices(indices: Sequence[Tensor], n_tokens: int, device=None) -> Tensor:
    """Visible-token mask from per-sample VST indices (each (K_b,) int). -> (B, N) bool."""
    visible = torch.zeros(len(indices), n_tokens, dtype=torch.bool, device=device)
    for row, index in enumerate(indices):
        index = torch.as_tensor(index, dtype=torch.long, device=device)
        if index.numel() and (index.min() < 0 or index.max() >= n_tokens):
            raise ValueError(
                f"mask_from_indices: sample {row} has VST index out of range [0, {n_tokens})"
            )
        visible[row, index] = True
    return visible


@dataclass
class SequentialRope:
    """``rope``: positions 0..L_c-1 for image tokens, L_c..L_c+N-1 for shape tokens."""

    cos: Tensor  # (L_c + N, D)
    sin: Tensor  # (L_c + N, D)

    def __call__(self, cond_q: Tensor, cond_k: Tensor, shape_q: Tensor, shape_k: Tensor) -> QK:
        n_cond = cond_q.shape[2]
        c_cos, c_sin, s_cos, s_sin = (
            self.cos[:n_cond],
            self.sin[:n_cond],
            self.cos[n_cond:],
            self.sin[n_cond:],
        )
        return (
            rotate(cond_q, c_cos, c_sin),
            rotate(cond_k, c_cos, c_sin),
            rotate(shape_q, s_cos, s_sin),
            rotate(shape_k, s_cos, s_sin),
        )


@dataclass
class CategoryRope:
    """``va-rope``: IST rotated by n - m relative to image tokens and VST (see module docstring).

    Per-token tables (identity on VST) are built once per forward and shared by all blocks.
    """

    cos: Tensor  # (B, 1, N, D)
    sin: Tensor  # (B, 1, N, D)

    @classmethod
    def build(cls, invisible: Tensor, delta: float, dim: int, theta: float) -> CategoryRope:
        """invisible (B, 1, N, 1) bool; IST turn by ``delta`` = n - m."""
        cos, sin = rope_tables(torch.tensor(delta, device=invisible.device), dim, theta)
        return cls(torch.where(invisible, cos, 1.0), torch.where(invisible, sin, 0.0))

    def __call__(self, cond_q: Tensor, cond_k: Tensor, shape_q: Tensor, shape_k: Tensor) -> QK:
        return (
            cond_q,
            cond_k,
            rotate(shape_q, self.cos, self.sin),
            rotate(shape_k, self.cos, self.sin),
        )


@dataclass
class CategoryEmbedding:
    """``va-lpe``: e_v added to image tokens and VST, e_i to IST (queries and keys alike)."""

    e_visible: Tensor  # (D,)
    e_invisible: Tensor  # (D,)
    invisible: Tensor  # (B, 1, N, 1) bool

    def __call__(self, cond_q: Tensor, cond_k: Tensor, shape_q: Tensor, shape_k: Tensor) -> QK:
        e_shape = torch.where(self.invisible, self.e_invisible, self.e_visible).to(shape_q.dtype)
        e_cond = self.e_visible.to(cond_q.dtype)
        return cond_q + e_cond, cond_k + e_cond, shape_q + e_shape, shape_k + e_shape


class VAPE(nn.Module):
    """Builds each double-stream block's Q/K encoding once per forward.

    Holds the only VAPE parameters (``va-lpe``): ``visible_embed`` and ``invisible_embed``,
    each (depth, head_dim), so every hy3dgen parameter name stays as it is.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.kind = config.vape
        self.depth = config.depth
        self.head_dim = config.head_dim
        self.theta = config.theta
        self.m, self.n = config.vape_m, config.vape_n
        if self.kind == "va-lpe":
            self.visible_embed = nn.Parameter(torch.empty(config.depth, config.head_dim))
            self.invisible_embed = nn.Parameter(torch.empty(config.depth, config.head_dim))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == "va-lpe":
            nn.init.normal_(self.visible_embed, std=0.02)
            nn.init.normal_(self.invisible_embed, std=0.02)

    def forward(
        self, visible: Tensor | None, n_cond: int, n_shape: int, device=None
    ) -> list | None:
        """Per-block encodings (a list of ``depth`` callables), or None for ``none``.

        Args:
            visible: (B, N) bool, True for VST; required by ``va-rope`` and ``va-lpe``.
            n_cond: number of image tokens L_c. n_shape: number of shape tokens N.
        """
        if self.kind == "none":
            return None
        if self.kind == "rope":
            positions = torch.arange(n_cond + n_shape, device=device)
            return [SequentialRope(*rope_tables(positions, self.head_dim, self.theta))] * self.depth
        invisible = self._invisible(visible, n_shape, device)
        if self.kind == "va-rope":
            rope = CategoryRope.build(invisible, self.n - self.m, self.head_dim, self.theta)
            return [rope] * self.depth
        return [
            CategoryEmbedding(self.visible_embed[i], self.invisible_embed[i], invisible)
            for i in range(self.depth)
        ]

    def _invisible(self, visible: Tensor | None, n_shape: int, device) -> Tensor:
        if visible is None:
            raise ValueError(
                f"vape {self.kind!r} needs visible (B, N) bool; at inference pass "
                "vilearn.dit.fixed_partition(N) (the paper's first-third partition)"
            )
        if visible.dtype != torch.bool or visible.dim() != 2 or visible.shape[1] != n_shape:
            raise ValueError(
                f"visible must be a (B, {n_shape}) bool tensor, "
                f"got {tuple(visible.shape)} {visible.dtype}"
            )
        return ~visible.to(device)[:, None, :, None]  # (B, 1, N, 1)
