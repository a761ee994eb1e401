"""The geometry decoder: query points cross-attend to the shape tokens and predict occupancy.

Same parameters and maths as hy3dgen 2.0.2's ``CrossAttentionDecoder`` (so its
``forward(queries=..., latents=...)`` signature is kept: hy3dgen's volume decoders can drive
it). On top, the two halves of its attention are exposed for Visibility Grouping:

- query path (``attention_queries``):
  Fourier(points) -> query_proj -> ln_1 -> c_q -> per-head q_norm
- key path (``attention_keys``):
  tokens -> [latents_proj] -> ln_2 -> c_kv (key half) -> per-head k_norm

where ``tokens`` are the transformer's output (``VecSetVAE.decode``), i.e. post-KL -> transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from vilearn.vae.layers import FourierEmbedder, ResidualCrossAttentionBlock, attention_probs


class CrossAttentionDecoder(nn.Module):
    def __init__(self, *, fourier_embedder: FourierEmbedder, out_channels: int, width: int,
                 heads: int, mlp_expand_ratio: int = 4, downsample_ratio: int = 1,
                 enable_ln_post: bool = True, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        self.fourier_embedder = fourier_embedder
        self.downsample_ratio = downsample_ratio
        self.enable_ln_post = enable_ln_post
        self.query_proj = nn.Linear(fourier_embedder.out_dim, width)
        if downsample_ratio != 1:
            self.latents_proj = nn.Linear(width * downsample_ratio, width)
        # hy3dgen silently drops qk_norm when ln_post is off; kept for weight compatibility.
        self.cross_attn_decoder = ResidualCrossAttentionBlock(
            width=width, heads=heads, mlp_expand_ratio=mlp_expand_ratio, qkv_bias=qkv_bias,
            qk_norm=qk_norm and enable_ln_post,
        )
        if enable_ln_post:
            self.ln_post = nn.LayerNorm(width)  # eps 1e-5, unlike the blocks' 1e-6 (as hy3dgen)
        self.output_proj = nn.Linear(width, out_channels)

    def embed_queries(self, queries: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """queries (B, M, 3) -> query embeddings (B, M, width)."""
        return self.query_proj(self.fourier_embedder(queries).to(dtype))

    def project_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, W_model) -> (B, N, width) as the cross-attention sees them."""
        return self.latents_proj(latents) if self.downsample_ratio != 1 else latents

    def forward(self, queries: torch.Tensor | None = None,
                query_embeddings: torch.Tensor | None = None,
                latents: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Occupancy logits (or TSDF) at query points.

        Args:
            queries: (B, M, 3) points in [-1, 1]^3 (or pass ``query_embeddings`` (B, M, width)).
            latents: (B, N, W) decoded tokens (``VecSetVAE.decode`` output, not raw latents).
            key_mask: (B, N) bool, optional; False tokens are ignored by the cross-attention.
        Returns:
            (B, M, out_channels)
        """
        if query_embeddings is None:
            query_embeddings = self.embed_queries(queries, latents.dtype)
        x = self.cross_attn_decoder(query_embeddings, self.project_tokens(latents), key_mask)
        if self.enable_ln_post:
            x = self.ln_post(x)
        return self.output_proj(x)

    # --- Visibility Grouping -------------------------------------------------------------

    def attention_queries(self, points: torch.Tensor,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Query path: points (B, M, 3) -> per-head queries (B, H, M, d)."""
        block = self.cross_attn_decoder
        x = block.ln_1(self.embed_queries(points, dtype))
        return block.attn.attention.split_q(block.attn.c_q(x))

    def attention_keys(self, latents: torch.Tensor) -> torch.Tensor:
        """Key path: decoded tokens (B, N, W) -> per-head keys (B, H, N, d)."""
        block = self.cross_attn_decoder
        kv = block.attn.c_kv(block.ln_2(self.project_tokens(latents)))
        return block.attn.attention.split_kv(kv)[0]

    def attention_probs(self, points: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """A_ij = softmax_j(q_i . k_j / sqrt(d)) averaged over heads.

        points (B, M, 3), decoded tokens (B, N, W) -> (B, M, N).

        Memory is B * H * M * N floats: chunk ``points`` for large M.
        """
        return attention_probs(self.attention_queries(points, latents.dtype),
                               self.attention_keys(latents))
