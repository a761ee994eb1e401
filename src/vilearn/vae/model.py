"""The VecSet VAE: FPS anchors -> encoder -> KL bottleneck -> transformer -> geometry decoder.

Top-level parameter names are hy3dshape 2.1's (``encoder``, ``pre_kl``, ``post_kl``,
``transformer``, ``geo_decoder``); with ``with_encoder=False`` the state dict is exactly
hy3dgen 2.0.2's ``ShapeVAE`` (the released Hunyuan3D-2.0 VAE has no encoder).

Shapes: B batch, P surface points, N tokens (any N, chosen per call), C latent channels
(``embed_dim``), W width, M query points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vilearn.vae.config import VAEConfig
from vilearn.vae.decoder import CrossAttentionDecoder
from vilearn.vae.distribution import DiagonalGaussian
from vilearn.vae.encoder import PointCrossAttentionEncoder
from vilearn.vae.fps import fps_indices, gather_points
from vilearn.vae.layers import FourierEmbedder, Transformer


@dataclass
class Encoded:
    """What ``VecSetVAE.encode`` returns; all tensors share the token order (FPS pick order)."""

    posterior: DiagonalGaussian  # mean, logvar: (B, N, C)
    anchors: torch.Tensor  # (B, N, 3) the FPS anchor point of each token
    anchor_index: torch.Tensor  # (B, N) int64 index of the anchor in the input surface


class VecSetVAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.fourier_embedder = FourierEmbedder(num_freqs=c.num_freqs, include_pi=c.include_pi)
        if c.with_encoder:
            self.encoder = PointCrossAttentionEncoder(
                fourier_embedder=self.fourier_embedder, point_feats=c.point_feats, width=c.width,
                heads=c.heads, layers=c.num_encoder_layers, qkv_bias=c.qkv_bias,
                qk_norm=c.qk_norm, use_ln_post=c.use_ln_post,
            )
            self.pre_kl = nn.Linear(c.width, c.embed_dim * 2)
        self.post_kl = nn.Linear(c.embed_dim, c.width)
        self.transformer = Transformer(width=c.width, layers=c.num_decoder_layers, heads=c.heads,
                                       qkv_bias=c.qkv_bias, qk_norm=c.qk_norm)
        ratio = c.geo_decoder_downsample_ratio
        self.geo_decoder = CrossAttentionDecoder(
            fourier_embedder=self.fourier_embedder, out_channels=1, width=c.width // ratio,
            heads=c.heads // ratio, mlp_expand_ratio=c.geo_decoder_mlp_expand_ratio,
            downsample_ratio=ratio, enable_ln_post=c.geo_decoder_ln_post, qkv_bias=c.qkv_bias,
            qk_norm=c.qk_norm,
        )

    # --- encoding ------------------------------------------------------------------------

    def encode(self, surface: torch.Tensor, num_tokens: int | None = None,
               anchor_index: torch.Tensor | None = None) -> Encoded:
        """Encode surface samples into N latent tokens.

        Args:
            surface: (B, P, 3 + point_feats) xyz and normals in the object frame.
            num_tokens: N; defaults to ``config.num_latents``.
            anchor_index: (B, N) int64, optional precomputed FPS picks (skips FPS).
        """
        if not self.config.with_encoder:
            raise RuntimeError("this VAE was built without an encoder (a decoder-only checkpoint)")
        if anchor_index is None:
            anchor_index = fps_indices(surface[..., :3], num_tokens or self.config.num_latents)
        anchors = gather_points(surface, anchor_index)
        moments = self.pre_kl(self.encoder(surface, anchors))
        return Encoded(DiagonalGaussian.from_moments(moments), anchors[..., :3], anchor_index)

    # --- decoding ------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, N, C) -> decoded tokens (B, N, W): post-KL projection then transformer.

        hy3dgen calls this ``ShapeVAE.forward``; hy3dgen latents are divided by its
        ``scale_factor`` first, which is the caller's business (the diffusion side).
        """
        return self.transformer(self.post_kl(latents))

    def query(self, queries: torch.Tensor, tokens: torch.Tensor,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Occupancy logits at points: queries (B, M, 3), tokens (B, N, W) -> (B, M).

        ``key_mask`` (B, N) bool restricts the cross-attention to a subset of the decoded
        tokens. To decode a subset *as its own shape* instead (the transformer sees only those
        tokens), call ``decode(latents[:, subset])``.
        """
        return self.geo_decoder(queries=queries, latents=tokens, key_mask=key_mask)[..., 0]

    def forward(self, surface: torch.Tensor, queries: torch.Tensor, num_tokens: int | None = None,
                anchor_index: torch.Tensor | None = None, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Training pass: surface (B, P, 6), queries (B, M, 3) -> logits (B, M), posterior.

        Either ``num_tokens`` (FPS runs here) or precomputed ``anchor_index`` (B, N).
        """
        encoded = self.encode(surface, num_tokens, anchor_index)
        posterior = encoded.posterior
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.query(queries, self.decode(latents)), posterior
