"""Visibility-Aware Positional Encoding (VAPE): one switch, built once per forward.

VAPE changes only queries and keys, after QK-norm and before attention; values and the rest of the
backbone are untouched. The token categories are: image tokens and visible shape tokens (VST) are
"visible", invisible shape tokens (IST) are "invisible". Visibility enters as ``visible (B, N)
bool`` over the shape tokens. Each token gets a code by its category, applied alike to its query
and its key wherever it attends or is attended to:

- ``none``: no positional encoding (the permutation-invariant VecSet baseline).
- ``va-rope``: RoPE (base ``theta`` over the head dimension) whose position is the category:
  visible tokens at m, invisible tokens at n. Only relative rotation enters a logit,
  (R_m q) . (R_n k) = q . (R_{n-m} k), so we rotate the IST by n - m and leave image tokens and
  VST untouched: the logits, hence the outputs, are those of rotating by m and n, for any m, and
  the cost is one rotation of the shape stream's Q/K (none at all for the image tokens).
- ``va-lpe``: learnable e_v, e_i (head dimension, one pair per attention layer) added to Q and K:
  e_v on image tokens and VST, e_i on IST.
- ``rope``: ordinary sequential RoPE over [image tokens, shape tokens] (the paper's ablation).

Where it acts depends on the denoiser:

- MM-DiT (``vilearn.dit.model``, the paper's setting): the joint attention of the double-stream
  blocks over [image tokens, shape tokens]; single-stream blocks are left alone.
- Cross-attention DiT (``vilearn.dit.plain``, Hunyuan3D-2.1's ``HunYuanDiTPlain``): every block,
  in (a) the self-attention among [time token, shape tokens] (VST at m, IST at n) and (b) the
  cross-attention from those queries (VST at m, IST at n) to the image keys (at m). The prepended
  time token is a condition token like the image tokens: visible category (m, e_v). Under
  ``rope`` the positions are those of the sequence [image tokens, time token, shape tokens]:
  image keys 0..L_c-1, the time token L_c, shape tokens L_c+1... . This is the paper's rule
  (image tokens and VST share m, IST gets n) read on each attention that exists: the logit
  between a shape query and an image key carries R_{m-m} = I for VST and R_{m-n} for IST, as in
  the MM-DiT's joint attention, and the self-attention keeps the VST/IST split among shape tokens.

At inference there is no ground-truth visibility: ``fixed_partition`` marks the first ceil(N * r)
shape tokens visible (r = 1/3, the paper's fixed partition).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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


Code = Callable[[Tensor], Tensor]  # (B, H, L, D) -> (B, H, L, D), one token group's Q or K


def unchanged(x: Tensor) -> Tensor:
    return x


@dataclass
class Rotation:
    """RoPE by per-token angles: cos, sin from ``rope_tables``, broadcastable to (B, H, L, D)."""

    cos: Tensor
    sin: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return rotate(x, self.cos, self.sin)


@dataclass
class Offset:
    """An additive embedding broadcastable to (B, H, L, D) (``va-lpe``)."""

    embedding: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return x + self.embedding.to(x.dtype)


@dataclass
class Encoding:
    """One attention layer's VAPE: ``cond`` codes the image tokens, ``shape`` the shape tokens."""

    cond: Code
    shape: Code

    def __call__(self, cond_q: Tensor, cond_k: Tensor, shape_q: Tensor, shape_k: Tensor) -> QK:
        """Joint attention (MM-DiT): each stream's Q and K get that stream's code."""
        return self.cond(cond_q), self.cond(cond_k), self.shape(shape_q), self.shape(shape_k)


class VAPE(nn.Module):
    """Builds each attention layer's Q/K encoding once per forward.

    Holds the only VAPE parameters (``va-lpe``): ``visible_embed`` and ``invisible_embed``, each
    (layers, head_dim), so every parameter name of the released denoisers stays as it is.

    Args:
        config: a denoiser config with ``vape``, ``vape_m``, ``vape_n``, ``theta``, ``head_dim``
            and ``depth`` (``DiTConfig`` or ``PlainDiTConfig``).
        layers: attention layers that get an encoding (default ``config.depth``: the MM-DiT's
            double-stream blocks; the cross-attention DiT has two per block).
    """

    def __init__(self, config, layers: int | None = None):
        super().__init__()
        self.kind = config.vape
        self.depth = config.depth if layers is None else layers
        self.head_dim = config.head_dim
        self.theta = config.theta
        self.m, self.n = config.vape_m, config.vape_n
        if self.kind == "va-lpe":
            self.visible_embed = nn.Parameter(torch.empty(self.depth, config.head_dim))
            self.invisible_embed = nn.Parameter(torch.empty(self.depth, config.head_dim))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == "va-lpe":
            nn.init.normal_(self.visible_embed, std=0.02)
            nn.init.normal_(self.invisible_embed, std=0.02)

    def forward(
        self, visible: Tensor | None, n_cond: int, n_shape: int, device=None, n_prefix: int = 0
    ) -> list[Encoding] | None:
        """Per-layer encodings (a list of ``depth`` ``Encoding``), or None for ``none``.

        Args:
            visible: (B, N) bool, True for VST; required by ``va-rope`` and ``va-lpe``.
            n_cond: number of image tokens L_c. n_shape: number of shape tokens N.
            n_prefix: condition tokens that lead the shape sequence (the cross-attention DiT's
                time token): coded as visible tokens (m, e_v; ``rope``: positions L_c...), so
                each ``Encoding.shape`` acts on (B, H, n_prefix + N, D).
        """
        if self.kind == "none":
            return None
        if self.kind == "rope":
            positions = torch.arange(n_cond + n_prefix + n_shape, device=device)
            cos, sin = rope_tables(positions, self.head_dim, self.theta)  # (L_c + P + N, D)
            rope = Encoding(
                Rotation(cos[:n_cond], sin[:n_cond]), Rotation(cos[n_cond:], sin[n_cond:])
            )
            return [rope] * self.depth
        invisible = self._invisible(visible, n_shape, device)  # (B, 1, N, 1)
        if n_prefix:
            invisible = nn.functional.pad(invisible, (0, 0, n_prefix, 0), value=False)
        if self.kind == "va-rope":
            # IST turn by n - m relative to image tokens and VST (see the module docstring)
            delta = torch.tensor(self.n - self.m, device=invisible.device)
            cos, sin = rope_tables(delta, self.head_dim, self.theta)  # (D,)
            rope = Rotation(torch.where(invisible, cos, 1.0), torch.where(invisible, sin, 0.0))
            return [Encoding(unchanged, rope)] * self.depth
        return [
            Encoding(
                Offset(self.visible_embed[i]),
                Offset(torch.where(invisible, self.invisible_embed[i], self.visible_embed[i])),
            )
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
