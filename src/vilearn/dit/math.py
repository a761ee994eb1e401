"""Attention, rotary position maths and the timestep embedding (pure tensor functions)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention. q, k, v (B, H, L, D) -> (B, L, H*D)."""
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return rearrange(x, "B H L D -> B L (H D)")


def rope_frequencies(dim: int, theta: float, device=None) -> Tensor:
    """omega_j = theta^(-2j/dim), j < dim/2: one frequency per rotated pair. -> (dim/2,) float64."""
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def rope_cos_sin(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of position * omega. positions (...,) -> two (..., dim/2) float32 tensors.

    Angles are formed in float64 so large positions keep their precision.
    """
    angles = positions.to(torch.float64)[..., None] * rope_frequencies(dim, theta, positions.device)
    return angles.cos().float(), angles.sin().float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[2j], x[2j+1]) by angle_j (flux/RoFormer layout).

    x (..., L, D); cos, sin broadcastable to (..., L, D/2). Returns x's shape and dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., L, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def timestep_embedding(
    t: Tensor, dim: int, max_period: float = 10_000, time_factor: float = 1000.0
):
    """Sinusoidal embedding of t (B,) -> (B, dim): [cos(args), sin(args)], args = t*factor*freqs."""
    t = time_factor * t
    half = dim // 2
    exponents = torch.arange(start=0, end=half, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponents).to(t.device)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    if torch.is_floating_point(t):
        embedding = embedding.to(t)
    return embedding
