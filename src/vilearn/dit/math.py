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


def rope_tables(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Rotation tables for ``rotate``: positions (...,) -> cos, sin, each (..., dim) float32.

    Pair j = (x[2j], x[2j+1]) turns by position * omega_j: cos = [c_0, c_0, c_1, c_1, ...] and
    sin = [-s_0, s_0, -s_1, s_1, ...]. Angles are formed in float64 (large positions stay exact).
    """
    angles = positions.to(torch.float64)[..., None] * rope_frequencies(dim, theta, positions.device)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)
    return cos.float(), sin.float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE: each pair (x[2j], x[2j+1]) rotated by its angle (flux/RoFormer layout).

    x (..., L, D); cos, sin from ``rope_tables``, broadcastable to (..., L, D). Computed as
    x * cos + swap(x) * sin with swap (x0, x1) -> (x1, x0): two products, no gather.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + swapped * sin).type_as(x)


def timestep_embedding(
    t: Tensor,
    dim: int,
    max_period: float = 10_000,
    time_factor: float = 1000.0,
    sin_first: bool = False,
):
    """Sinusoidal embedding of t (B,) -> (B, dim), args = t * factor * freqs.

    [cos(args), sin(args)] (flux, hy3dgen) or, with ``sin_first``, [sin(args), cos(args)]
    (diffusers' ``Timesteps`` without flip, Hunyuan3D-2.1's ``Timesteps``). The frequencies are
    formed in the references' order, exp((-log(max_period) * j) / half), for equal rounding.
    """
    t = time_factor * t
    half = dim // 2
    exponents = -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half
    freqs = torch.exp(exponents).to(t.device)
    args = t[:, None].float() * freqs[None]
    parts = (torch.sin(args), torch.cos(args)) if sin_first else (torch.cos(args), torch.sin(args))
    embedding = torch.cat(parts, dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    if torch.is_floating_point(t):
        embedding = embedding.to(t)
    return embedding
