"""Point cross-attention encoder (3DShape2VecSet / Hunyuan3D-2.1 ``PointCrossAttentionEncoder``).

Names and maths follow hy3dshape 2.1 (``input_proj``, ``cross_attn``, ``self_attn``,
``ln_post``; checked against it on random weights, tests/fixtures/hy21-vae). What it reads is
chosen outside, by ``vilearn.vae.input`` (hy3dshape does it inside its encoder): the surface
points and, among them, the anchor of each token, in token order (for Hunyuan3D's VAEs the FPS
picks of the uniform samples, then of the sharp-edge ones). Normals and the sharp flag enter
as raw features (hy3dshape's ``normal_pe = False``, its default).
"""

from __future__ import annotations

import torch
from torch import nn

from vilearn.vae.layers import FourierEmbedder, ResidualCrossAttentionBlock, Transformer


class PointCrossAttentionEncoder(nn.Module):
    def __init__(self, *, fourier_embedder: FourierEmbedder, point_feats: int, width: int,
                 heads: int, layers: int, qkv_bias: bool = True, qk_norm: bool = False,
                 use_ln_post: bool = True):
        super().__init__()
        self.fourier_embedder = fourier_embedder
        self.point_feats = point_feats
        self.input_proj = nn.Linear(fourier_embedder.out_dim + point_feats, width)
        self.cross_attn = ResidualCrossAttentionBlock(width=width, heads=heads, qkv_bias=qkv_bias,
                                                      qk_norm=qk_norm)
        self.self_attn = (Transformer(width=width, layers=layers, heads=heads, qkv_bias=qkv_bias,
                                      qk_norm=qk_norm) if layers > 0 else None)
        self.ln_post = nn.LayerNorm(width) if use_ln_post else None

    def embed(self, surface: torch.Tensor) -> torch.Tensor:
        """surface (B, P, 3 + point_feats) -> (B, P, width)."""
        xyz, feats = surface[..., :3], surface[..., 3:]
        if feats.shape[-1] != self.point_feats:
            raise ValueError(f"surface has {feats.shape[-1]} feature channels after xyz, the "
                             f"encoder expects point_feats={self.point_feats}")
        return self.input_proj(torch.cat([self.fourier_embedder(xyz), feats], dim=-1))

    def forward(self, surface: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Cross-attend from the anchor points to all surface points.

        Args:
            surface: (B, P, 3 + point_feats) xyz (+ normals), all input points.
            anchors: (B, N, 3 + point_feats) the FPS picks among them, in token order.
        Returns:
            (B, N, width) token features before the KL projection.
        """
        x = self.cross_attn(self.embed(anchors), self.embed(surface))
        if self.self_attn is not None:
            x = self.self_attn(x)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return x
