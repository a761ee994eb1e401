"""The VAE's typed configuration, named presets, and translation from hy3dgen's YAML ``params``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from vilearn.config import ConfigError, from_dict


@dataclass
class VAEConfig:
    """Architecture of the VecSet VAE. Field names follow hy3dgen's ``ShapeVAE`` params.

    ``num_latents`` is only the default token count (hy3dgen's ``n_ctx``): the weights do not
    depend on it, and ``encode(..., num_tokens=N)`` takes any N. ``with_encoder: false`` builds
    the decoder alone, which is exactly the parameter set of a Hunyuan3D-2.0 checkpoint.
    """

    embed_dim: int = 64  # C, channels per latent token
    width: int = 1024
    heads: int = 16
    num_decoder_layers: int = 16
    num_encoder_layers: int = 0
    num_latents: int = 3072
    num_freqs: int = 8
    include_pi: bool = True
    qkv_bias: bool = True
    qk_norm: bool = False
    point_feats: int = 3  # normals as extra input channels of the encoder
    use_ln_post: bool = True  # encoder's final LayerNorm (hy3dshape 2.1)
    geo_decoder_mlp_expand_ratio: int = 4
    geo_decoder_downsample_ratio: int = 1
    geo_decoder_ln_post: bool = True
    label_type: Literal["binary", "tsdf"] = "binary"
    scale_factor: float = 1.0  # latent scale used by the diffusion model (hy3dgen's convention)
    with_encoder: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_dim", "width", "heads", "num_latents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        ratio = self.geo_decoder_downsample_ratio
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if ratio < 1 or self.width % ratio or self.heads % ratio:
            raise ValueError(f"geo_decoder_downsample_ratio {ratio} must divide width and heads")
        if self.num_freqs < 0 or self.num_encoder_layers < 0 or self.num_decoder_layers < 0:
            raise ValueError("num_freqs and layer counts must be >= 0")


PRESETS: dict[str, VAEConfig] = {
    # Hunyuan3D-2.0 hunyuan3d-vae-v2-0 (decoder only, as released).
    "hunyuan3d-vae-v2-0": VAEConfig(
        embed_dim=64, width=1024, heads=16, num_decoder_layers=16, num_latents=3072,
        num_freqs=8, include_pi=False, qkv_bias=False, qk_norm=True,
        scale_factor=0.9990943042622529, with_encoder=False,
    ),
    # Small enough to train on a laptop CPU in minutes.
    "tiny": VAEConfig(
        embed_dim=8, width=64, heads=4, num_decoder_layers=2, num_encoder_layers=0,
        num_latents=256, num_freqs=6, include_pi=False, qk_norm=True,
    ),
}

# hy3dgen (2.0 and 2.1) keys that describe data sampling or training, not weights.
_HY3DGEN_IGNORED = {
    "pc_size", "pc_sharpedge_size", "downsample_ratio", "drop_path_rate", "ckpt_path",
}


def from_hy3dgen_params(params: dict, has_encoder: bool) -> VAEConfig:
    """A hy3dgen YAML ``params`` mapping -> VAEConfig (unknown keys raise ConfigError)."""
    data = {k: v for k, v in params.items() if k not in _HY3DGEN_IGNORED}
    config = from_dict(VAEConfig, data, "params")
    if has_encoder and "num_encoder_layers" not in params:
        # hy3dshape 2.1's default when its YAML does not say.
        config = replace(config, num_encoder_layers=8)
    return replace(config, with_encoder=has_encoder)


def preset(name: str) -> VAEConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown VAE preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
