"""Building blocks of the VecSet VAE, with hy3dgen 2.0.2's parameter names and maths.

Every module here holds exactly the parameters (names and shapes) of its namesake in
``hy3dgen/shapegen/models/autoencoders/attention_blocks.py`` so that Hunyuan3D-2 state dicts
load with ``strict=True``, and computes the same function, including two details that are
easy to get wrong:

- the fused projections are split *per head*: ``c_qkv`` output is viewed as
  ``(B, N, heads, 3 * d)`` and then cut into q, k, v, so head ``h``'s query lives in channels
  ``[3dh, 3dh + d)``, not in the first third of the vector (likewise ``c_kv`` with 2d);
- ``qk_norm`` is a LayerNorm over the head dimension (eps 1e-6) applied after that split.

Drop-path and the KV cache of hy3dgen are left out (no parameters, not needed for training
at our scale or for exact decoding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierEmbedder(nn.Module):
    """x -> [x, sin(f x), cos(f x)] with f = 2^k (times pi when ``include_pi``), k < num_freqs.

    Args:
        x: (..., input_dim)
    Returns:
        (..., input_dim * (2 * num_freqs + 1)); the sin block is ordered (dim, freq).
    """

    def __init__(self, num_freqs: int = 8, include_pi: bool = True, input_dim: int = 3):
        super().__init__()
        frequencies = 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
        if include_pi:
            frequencies = frequencies * torch.pi
        # Not persistent: hy3dgen checkpoints do not store it.
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.num_freqs = num_freqs
        self.out_dim = input_dim * (2 * num_freqs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_freqs == 0:
            return x
        embed = (x[..., None] * self.frequencies).reshape(*x.shape[:-1], -1)
        return torch.cat((x, embed.sin(), embed.cos()), dim=-1)


def _head_norm(qk_norm: bool, head_dim: int) -> nn.Module:
    return nn.LayerNorm(head_dim, elementwise_affine=True, eps=1e-6) if qk_norm else nn.Identity()


def _layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)


class MLP(nn.Module):
    """Linear -> GELU -> Linear, (..., width) -> (..., width)."""

    def __init__(self, *, width: int, expand_ratio: int = 4):
        super().__init__()
        self.c_fc = nn.Linear(width, width * expand_ratio)
        self.c_proj = nn.Linear(width * expand_ratio, width)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class QKVMultiheadAttention(nn.Module):
    """Self-attention core: fused qkv (B, N, 3W) -> (B, N, W). Holds only the q/k norms."""

    def __init__(self, *, heads: int, width: int, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.q_norm = _head_norm(qk_norm, width // heads)
        self.k_norm = _head_norm(qk_norm, width // heads)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, n, width3 = qkv.shape
        q, k, v = qkv.view(b, n, self.heads, -1).split(width3 // self.heads // 3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, n, -1)  # (B, N, W)


class MultiheadAttention(nn.Module):
    def __init__(self, *, width: int, heads: int, qkv_bias: bool, qk_norm: bool = False):
        super().__init__()
        self.c_qkv = nn.Linear(width, width * 3, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = QKVMultiheadAttention(heads=heads, width=width, qk_norm=qk_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.attention(self.c_qkv(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1 x), then + mlp(ln_2 x). (B, N, W) -> (B, N, W)."""

    def __init__(self, *, width: int, heads: int, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        self.attn = MultiheadAttention(width=width, heads=heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.ln_1 = _layer_norm(width)
        self.mlp = MLP(width=width)
        self.ln_2 = _layer_norm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``layers`` self-attention blocks over a token set (no positional encoding)."""

    def __init__(self, *, width: int, layers: int, heads: int, qkv_bias: bool = True,
                 qk_norm: bool = False):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width=width, heads=heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class QKVMultiheadCrossAttention(nn.Module):
    """Cross-attention core: q (B, M, W) and fused kv (B, N, 2W) -> (B, M, W).

    ``key_mask`` (B, N) bool, optional: attend only to tokens where it is True (decoding from a
    subset of the tokens without re-running the transformer).
    """

    def __init__(self, *, heads: int, width: int, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.q_norm = _head_norm(qk_norm, width // heads)
        self.k_norm = _head_norm(qk_norm, width // heads)

    def split_q(self, q: torch.Tensor) -> torch.Tensor:
        """(B, M, W) -> per-head normalised queries (B, H, M, d)."""
        b, m, _ = q.shape
        return self.q_norm(q.view(b, m, self.heads, -1)).transpose(1, 2)

    def split_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 2W) -> normalised keys and values, each (B, H, N, d)."""
        b, n, width2 = kv.shape
        k, v = kv.view(b, n, self.heads, -1).split(width2 // self.heads // 2, dim=-1)
        return self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def forward(self, q: torch.Tensor, kv: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, m, _ = q.shape
        q = self.split_q(q)
        k, v = self.split_kv(kv)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, m, -1)  # (B, M, W)


class MultiheadCrossAttention(nn.Module):
    def __init__(self, *, width: int, heads: int, qkv_bias: bool = True,
                 data_width: int | None = None, qk_norm: bool = False):
        super().__init__()
        data_width = width if data_width is None else data_width
        self.c_q = nn.Linear(width, width, bias=qkv_bias)
        self.c_kv = nn.Linear(data_width, width * 2, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = QKVMultiheadCrossAttention(heads=heads, width=width, qk_norm=qk_norm)

    def forward(self, x: torch.Tensor, data: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.c_proj(self.attention(self.c_q(x), self.c_kv(data), key_mask))


class ResidualCrossAttentionBlock(nn.Module):
    """x + attn(ln_1 x, ln_2 data), then + mlp(ln_3 x).

    x (B, M, W), data (B, N, Wd) -> (B, M, W).
    """

    def __init__(self, *, width: int, heads: int, mlp_expand_ratio: int = 4,
                 data_width: int | None = None, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        data_width = width if data_width is None else data_width
        self.attn = MultiheadCrossAttention(width=width, heads=heads, qkv_bias=qkv_bias,
                                            data_width=data_width, qk_norm=qk_norm)
        self.ln_1 = _layer_norm(width)
        self.ln_2 = _layer_norm(data_width)
        self.ln_3 = _layer_norm(width)
        self.mlp = MLP(width=width, expand_ratio=mlp_expand_ratio)

    def forward(self, x: torch.Tensor, data: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), self.ln_2(data), key_mask)
        return x + self.mlp(self.ln_3(x))


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax_j(q_i . k_j / sqrt(d)) averaged over heads.

    q (B, H, M, d), k (B, H, N, d) -> (B, M, N).
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1).mean(dim=1)
