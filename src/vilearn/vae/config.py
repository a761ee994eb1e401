"""The VAE's typed configuration, named presets, and translation from hy3dgen's YAML ``params``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

from vilearn.config import (
    AtLeastOne,
    ConfigError,
    NonNegative,
    Positive,
    from_dict,
    read_yaml,
    resolve_config_path,
)


@dataclass
class VAEConfig:
    """Architecture of the VecSet VAE. Field names follow hy3dgen's ``ShapeVAE`` params.

    ``num_latents`` is only the default token count (hy3dgen's ``n_ctx``): the weights do not
    depend on it, and ``encode(..., num_tokens=N)`` takes any N. ``with_encoder: false`` builds
    the decoder alone, which is exactly the parameter set of a Hunyuan3D-2.0 checkpoint.
    """

    embed_dim: Annotated[int, AtLeastOne] = 64  # C, channels per latent token
    width: Annotated[int, AtLeastOne] = 1024
    heads: Annotated[int, AtLeastOne] = 16
    num_decoder_layers: Annotated[int, NonNegative] = 16
    num_encoder_layers: Annotated[int, NonNegative] = 0
    num_latents: Annotated[int, AtLeastOne] = 3072
    num_freqs: Annotated[int, NonNegative] = 8
    include_pi: bool = True
    qkv_bias: bool = True
    qk_norm: bool = False
    point_feats: int = 3  # encoder input channels after xyz: 0, 3 (normal) or 4 (normal, sharp flag)
    use_ln_post: bool = True  # encoder's final LayerNorm (hy3dshape 2.1)
    geo_decoder_mlp_expand_ratio: Annotated[int, AtLeastOne] = 4
    geo_decoder_downsample_ratio: Annotated[int, AtLeastOne] = 1
    geo_decoder_ln_post: bool = True
    label_type: Literal["binary", "tsdf"] = "binary"
    # latent scale used by the diffusion model (hy3dgen's convention)
    scale_factor: Annotated[float, Positive] = 1.0
    with_encoder: bool = True
    # What the encoder reads (hy3dshape's names; no weight depends on them, see
    # ``vilearn.vae.input``): N tokens read N * downsample_ratio surface points, the fraction
    # pc_sharpedge_size / (pc_size + pc_sharpedge_size) of them (and of the tokens) on sharp
    # edges. downsample_ratio 0 (our VAEs): the caller's point count, tokens by FPS over all.
    pc_size: Annotated[int, NonNegative] = 0
    pc_sharpedge_size: Annotated[int, NonNegative] = 0
    downsample_ratio: Annotated[int, NonNegative] = 0

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
        if self.point_feats not in (0, 3, 4):
            raise ValueError(f"point_feats must be 0 (xyz), 3 (xyz + normal) or 4 (xyz + normal + "
                             f"sharp-edge flag), got {self.point_feats}")
        if min(self.pc_size, self.pc_sharpedge_size, self.downsample_ratio) < 0:
            raise ValueError("pc_size, pc_sharpedge_size and downsample_ratio must be >= 0")


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

# hy3dgen (2.0 and 2.1) keys that describe training, not weights or the encoder's input.
_HY3DGEN_IGNORED = {"drop_path_rate", "ckpt_path"}
# hy3dshape's ShapeVAE defaults for the encoder keys its YAML files may leave out.
_HY3DGEN_ENCODER_DEFAULTS = {
    "num_encoder_layers": 8, "pc_size": 5120, "pc_sharpedge_size": 5120, "downsample_ratio": 20,
}
# Released Hunyuan3D VAE configs packaged as YAML in hy3dgen's layout (``configs/<name>.yaml``).
PACKAGED = ("hunyuan3d-vae-v2-1", "hunyuan3d-vae-v2-0-withencoder")


def from_hy3dgen_params(params: dict, has_encoder: bool) -> VAEConfig:
    """A hy3dgen YAML ``params`` mapping -> VAEConfig (unknown keys raise ConfigError)."""
    data = {k: v for k, v in params.items() if k not in _HY3DGEN_IGNORED}
    if has_encoder:
        data = {**_HY3DGEN_ENCODER_DEFAULTS, **data}
    config = from_dict(VAEConfig, data, "params")
    return replace(config, with_encoder=has_encoder)


def preset(name: str) -> VAEConfig:
    """A named architecture: ``PRESETS``, or a packaged released config (``PACKAGED``)."""
    if name in PACKAGED:
        return from_hy3dgen_params(read_yaml(resolve_config_path(name))["params"], has_encoder=True)
    if name not in PRESETS:
        raise ConfigError(f"unknown VAE preset {name!r} (known: {', '.join([*PRESETS, *PACKAGED])})")
    return PRESETS[name]
