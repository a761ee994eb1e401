"""The MM-DiT's building blocks, with hy3dgen 2.0.2's parameter names and maths.

Names: hy3dgen (after flux) calls the shape-latent stream ``img`` and the condition stream ``txt``.
The attribute names are kept (``img_attn``, ``txt_mlp``, ...) so Hunyuan3D-2 checkpoints load with
strict=True; the code around them says ``shape`` and ``cond``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from vilearn.dit.math import attention


class MLPEmbedder(nn.Module):
    """Linear -> activation -> Linear: (B, in_dim) -> (B, out_dim or hidden_dim).

    hy3dgen's (SiLU, out = hidden); diffusers' ``TimestepEmbedding`` is the same with GELU and a
    wider hidden layer (Step1X-3D's time embedder: width -> 4 width -> width).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None,
                 activation: str = "silu"):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.act = {"silu": nn.SiLU, "gelu": nn.GELU}[activation]()
        self.out_layer = nn.Linear(hidden_dim, out_dim or hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.act(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32, then a learned scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_dtype = x.dtype
        x = x.float()
        rrms = torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-6)
        return (x * rrms).to(dtype=x_dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """q, k, v (B, H, L, D) -> normed q, k in v's dtype."""
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class StreamAttention(nn.Module):
    """One stream's QKV projection, QK-norm and output projection (hy3dgen's ``SelfAttention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L, C) -> q, k, v (B, H, L, D), q and k RMS-normed."""
        q, k, v = rearrange(self.qkv(x), "B L (K H D) -> K B H L D", K=3, H=self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


class ModulationOut(NamedTuple):
    shift: Tensor  # (B, 1, C)
    scale: Tensor
    gate: Tensor

    def modulate(self, x: Tensor) -> Tensor:
        return (1 + self.scale) * x + self.shift


class Modulation(nn.Module):
    """adaLN: vec (B, C) -> one (double=False) or two (double=True) shift/scale/gate triples."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.is_double else None


def mlp(hidden_size: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(hidden_size * mlp_ratio)
    return nn.Sequential(
        nn.Linear(hidden_size, hidden, bias=True),
        nn.GELU(approximate="tanh"),
        nn.Linear(hidden, hidden_size, bias=True),
    )


class DoubleStreamBlock(nn.Module):
    """MM-DiT block: separate weights per stream, joint attention over [cond, shape].

    The only place VAPE acts: ``pe`` maps the streams' normed Q/K before attention.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = StreamAttention(hidden_size, num_heads, qkv_bias=qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = mlp(hidden_size, mlp_ratio)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = StreamAttention(hidden_size, num_heads, qkv_bias=qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = mlp(hidden_size, mlp_ratio)

    def forward(self, shape: Tensor, cond: Tensor, vec: Tensor, pe=None) -> tuple[Tensor, Tensor]:
        """shape (B, N, C), cond (B, L_c, C), vec (B, C); pe: a VAPE encoding or None."""
        shape_mod1, shape_mod2 = self.img_mod(vec)
        cond_mod1, cond_mod2 = self.txt_mod(vec)
        shape_q, shape_k, shape_v = self.img_attn.qkv_heads(
            shape_mod1.modulate(self.img_norm1(shape))
        )
        cond_q, cond_k, cond_v = self.txt_attn.qkv_heads(cond_mod1.modulate(self.txt_norm1(cond)))
        if pe is not None:
            cond_q, cond_k, shape_q, shape_k = pe(cond_q, cond_k, shape_q, shape_k)

        attn = attention(
            torch.cat((cond_q, shape_q), dim=2),
            torch.cat((cond_k, shape_k), dim=2),
            torch.cat((cond_v, shape_v), dim=2),
        )  # (B, L_c + N, C)
        cond_attn, shape_attn = attn[:, : cond.shape[1]], attn[:, cond.shape[1] :]

        shape = shape + shape_mod1.gate * self.img_attn.proj(shape_attn)
        shape = shape + shape_mod2.gate * self.img_mlp(shape_mod2.modulate(self.img_norm2(shape)))
        cond = cond + cond_mod1.gate * self.txt_attn.proj(cond_attn)
        cond = cond + cond_mod2.gate * self.txt_mlp(cond_mod2.modulate(self.txt_norm2(cond)))
        return shape, cond


class SingleStreamBlock(nn.Module):
    """DiT block with parallel attention and MLP (ViT-22B), over the joined [cond, shape] tokens."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)  # qkv, mlp_in
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)  # proj, mlp_out
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        """x (B, L, C), vec (B, C) -> (B, L, C)."""
        mod, _ = self.modulation(vec)
        qkv, mlp_in = torch.split(
            self.linear1(mod.modulate(self.pre_norm(x))),
            [3 * self.hidden_size, self.mlp_hidden_dim],
            dim=-1,
        )
        q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v), self.mlp_act(mlp_in)), 2))
        return x + mod.gate * out


class LastLayer(nn.Module):
    """adaLN-modulated norm and linear to the latent channels: (B, N, C) -> (B, N, out_channels)."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        )

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        x = (1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :]
        return self.linear(x)
