"""The denoisers' typed configurations and their named presets.

``DiTConfig`` (the MM-DiT, ``arch: mmdit``) mirrors the constructor of hy3dgen 2.0.2's
``Hunyuan3DDiT`` (so a Hunyuan3D-2 checkpoint maps onto it one to one) plus the VAPE switch.
``PlainDiTConfig`` (the cross-attention DiT, ``arch: plain``) mirrors Hunyuan3D-2.1's
``HunYuanDiTPlain`` in the same way. Presets are plain dicts of overrides so a YAML file or CLI
override can start from one: ``dit_config("paper-0.39b", vape="va-rope")``; ``denoiser_config``
reads a training config's ``model`` section (``arch``, ``preset`` and any key of the class).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from vilearn.config import ConfigError, from_dict

VapeKind = Literal["none", "va-rope", "va-lpe", "rope"]
VAPE_KINDS: tuple[str, ...] = ("none", "va-rope", "va-lpe", "rope")
TimeEmbedding = Literal["hunyuan3d-2", "step1x-3d"]


def check_heads_and_vape(config) -> None:
    """What every denoiser config needs: heads that split the width into an even head_dim
    (RoPE turns pairs), a known VAPE and a visible ratio in [0, 1]."""
    if config.hidden_size % config.num_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} must be divisible by num_heads {config.num_heads}"
        )
    if config.head_dim % 2:
        raise ValueError(
            f"head_dim {config.head_dim} (hidden_size / num_heads) must be even for RoPE"
        )
    if config.vape not in VAPE_KINDS:
        raise ValueError(f"vape {config.vape!r} is not one of {', '.join(VAPE_KINDS)}")
    if not 0.0 <= config.visible_ratio <= 1.0:
        raise ValueError(f"visible_ratio must be in [0, 1], got {config.visible_ratio!r}")


@dataclass
class DiTConfig:
    """Shape of the denoiser and its positional encoding.

    Attributes:
        in_channels: latent channels C of the VAE (Hunyuan3D-2: 64).
        context_in_dim: width of the image tokens from the conditioner (DINOv2-giant: 1536).
        hidden_size: transformer width; must divide by ``num_heads``.
        mlp_ratio: MLP hidden width over ``hidden_size``.
        num_heads: attention heads; head_dim = hidden_size / num_heads (even, for RoPE).
        depth: double-stream (MM-DiT) blocks; VAPE acts only inside these.
        depth_single_blocks: single-stream blocks over [cond, shape].
        theta: RoPE base for ``va-rope`` and ``rope``.
        qkv_bias: bias on the QKV projections of the double-stream blocks.
        time_factor: hy3dgen's name; it reaches the sinusoidal embedding as ``max_period`` (passed
            positionally there), while t in [0, 1] is scaled by 1000. Kept for weight compatibility.
        guidance_embed: a distilled-guidance embedding input (hy3dgen's ``guidance_in``).
        time_embedding: how t (0 = noise, 1 = data) becomes the modulation vector; the one
            place the two released MM-DiTs differ in maths (the rest is a renaming, see
            ``vilearn.dit.step1x``):
            ``hunyuan3d-2`` (hy3dgen's ``Hunyuan3DDiT``, after flux): 256 frequencies
            [cos, sin] of 1000 t with max period ``time_factor``, then Linear(256, W), SiLU,
            Linear(W, W).
            ``step1x-3d`` (Step1X-3D's ``FluxTransformer1DModel``, diffusers' ``Timesteps`` +
            ``TimestepEmbedding``): W frequencies [sin, cos] of the timestep 1000 (1 - t) (its
            scheduler's sigma = 1 - t is the noise level) with max period 10000, then
            Linear(W, 4W), GELU, Linear(4W, W).
        vape: ``none`` | ``va-rope`` | ``va-lpe`` | ``rope`` (see ``vilearn.dit.vape``).
        vape_m: VA-RoPE category position of image tokens and VST.
        vape_n: VA-RoPE category position of IST.
        visible_ratio: r of the inference fixed partition (first ceil(N * r) tokens visible).
    """

    in_channels: int = 64
    context_in_dim: int = 1536
    hidden_size: int = 1024
    mlp_ratio: float = 4.0
    num_heads: int = 16
    depth: int = 16
    depth_single_blocks: int = 32
    theta: float = 10_000.0
    qkv_bias: bool = True
    time_factor: float = 1000.0
    guidance_embed: bool = False
    time_embedding: TimeEmbedding = "hunyuan3d-2"
    vape: VapeKind = "none"
    vape_m: float = 0.0
    vape_n: float = 50.0
    visible_ratio: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        positive = (
            "in_channels",
            "context_in_dim",
            "hidden_size",
            "num_heads",
            "mlp_ratio",
            "theta",
            "time_factor",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("depth", "depth_single_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        check_heads_and_vape(self)
        if self.time_embedding not in ("hunyuan3d-2", "step1x-3d"):
            raise ValueError(f"time_embedding {self.time_embedding!r} is not one of hunyuan3d-2, "
                             "step1x-3d")
        if self.guidance_embed and self.time_embedding != "hunyuan3d-2":
            raise ValueError("guidance_embed needs time_embedding hunyuan3d-2 (hy3dgen's)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# Named presets: overrides of the DiTConfig defaults (which are Hunyuan3D-2's 1.1B shape).
PRESETS: dict[str, dict] = {
    # CPU tests and the demo: seconds per hundred steps on one core.
    "tiny": dict(
        in_channels=8,
        context_in_dim=64,
        hidden_size=64,
        num_heads=4,
        depth=2,
        depth_single_blocks=2,
    ),
    # The paper's ablation size (0.39B). The paper gives only the parameter count; we keep
    # head_dim 64 (same RoPE frequencies as 1.1B) and shrink width and depth: 0.39B parameters.
    "paper-0.39b": dict(hidden_size=768, num_heads=12, depth=12, depth_single_blocks=15),
    # Hunyuan3D-2 (hunyuan3d-dit-v2-0): hidden 1024, 16 heads, 16 double + 32 single blocks,
    # 64 latent channels, DINOv2-giant context (1536). 1.1B parameters.
    "hunyuan3d-2": dict(),
    # Step1X-3D (Step1X-3D-Geometry-1300m): width 1280, 20 heads, 12 double + 24 single blocks,
    # 64 latent channels, DINOv2-with-registers-L context (1024), diffusers' time embedding.
    # 1.3B parameters. Its released layout loads through ``vilearn.dit.step1x``.
    "step1x-3d": dict(context_in_dim=1024, hidden_size=1280, num_heads=20, depth=12,
                      depth_single_blocks=24, time_embedding="step1x-3d"),
}
PRESETS["paper-1.1b"] = PRESETS["hunyuan3d-2"]


@dataclass
class PlainDiTConfig:
    """Shape of the cross-attention DiT (Hunyuan3D-2.1's ``HunYuanDiTPlain``) and its VAPE.

    Field names follow ``HunYuanDiTPlain``'s constructor (the released ``config.yaml``'s
    ``params``); options the released weights do not use (attention pooling, decoupled
    cross-attention, positional embedding, guidance projection) are not offered.

    Attributes:
        in_channels: latent channels C of the VAE (Hunyuan3D-2.1: 64).
        context_dim: width of the image tokens (DINOv2-L: 1024).
        hidden_size: transformer width; must divide by ``num_heads``.
        depth: blocks (self-attention, cross-attention, FFN); the second half's blocks take a
            long skip from the first half's (U-ViT style).
        num_heads: attention heads; head_dim = hidden_size / num_heads (even, for RoPE).
        qk_norm: RMS norm of Q and K per head (the release: true).
        qkv_bias: bias on the Q, K, V projections (the release: false).
        num_moe_layers: the last blocks whose FFN is a mixture of experts.
        num_experts, moe_top_k: experts per MoE layer and experts each token is routed to; a
            shared expert sees every token.
        moe_aux_weight: weight of the load-balancing loss added to the training loss (the
            reference's gate ``aux_loss_alpha``, 0.01), summed over the MoE layers.
        theta, vape, vape_m, vape_n, visible_ratio: as in ``DiTConfig``; VAPE acts in every block's
            self- and cross-attention (``vilearn.dit.vape``).
    """

    in_channels: int = 64
    context_dim: int = 1024
    hidden_size: int = 2048
    depth: int = 21
    num_heads: int = 16
    qk_norm: bool = True
    qkv_bias: bool = False
    num_moe_layers: int = 6
    num_experts: int = 8
    moe_top_k: int = 2
    moe_aux_weight: float = 0.01
    theta: float = 10_000.0
    vape: VapeKind = "none"
    vape_m: float = 0.0
    vape_n: float = 50.0
    visible_ratio: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "context_dim", "hidden_size", "depth", "num_heads", "theta",
                     "num_experts", "moe_top_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        check_heads_and_vape(self)
        if not 0 <= self.num_moe_layers <= self.depth:
            raise ValueError(f"num_moe_layers must be in [0, depth={self.depth}], "
                             f"got {self.num_moe_layers}")
        if self.moe_top_k > self.num_experts:
            raise ValueError(f"moe_top_k {self.moe_top_k} exceeds num_experts {self.num_experts}")
        if self.moe_aux_weight < 0:
            raise ValueError(f"moe_aux_weight must be >= 0, got {self.moe_aux_weight!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def context_in_dim(self) -> int:
        """The image-token width, under the name the MM-DiT's config uses."""
        return self.context_dim


PLAIN_PRESETS: dict[str, dict] = {
    # CPU tests: 4 blocks (two long skips), the last one a 4-expert top-2 MoE.
    "tiny": dict(in_channels=8, context_dim=64, hidden_size=64, num_heads=4, depth=4,
                 num_moe_layers=1, num_experts=4, moe_top_k=2),
    # Hunyuan3D-2.1 (hunyuan3d-dit-v2-1): width 2048, 16 heads, 21 blocks, the last 6 with an
    # 8-expert top-2 MoE and a shared expert, 64 latent channels, DINOv2-L context (1024,
    # 1370 tokens at 518 px incl. CLS). 3.05B parameters (the model card's 3.3B "shape model"
    # presumably includes the VAE). Values: hy3dshape's fine-tuning config's denoiser_cfg.
    "hunyuan3d-2.1": dict(),
}

ARCHS: dict[str, tuple[type, dict[str, dict]]] = {
    "mmdit": (DiTConfig, PRESETS),
    "plain": (PlainDiTConfig, PLAIN_PRESETS),
}


def denoiser_config(section: dict, where: str = "model") -> DiTConfig | PlainDiTConfig:
    """A training config's ``model`` section -> the denoiser's config, validated.

    ``arch`` (``mmdit``, the default, or ``plain``) picks the class, ``preset`` (default ``tiny``)
    one of its presets, and every other key overrides a field of that class.
    """
    section = dict(section)
    arch = section.pop("arch", "mmdit")
    if arch not in ARCHS:
        raise ConfigError(f"{where}.arch: {arch!r} is not one of {', '.join(ARCHS)}")
    cls, presets = ARCHS[arch]
    preset = section.pop("preset", "tiny")
    if preset not in presets:
        raise ConfigError(f"{where}.preset: {preset!r} is not a {arch} preset "
                          f"(known: {', '.join(sorted(presets))})")
    return from_dict(cls, {**presets[preset], **section}, where=where)


def dit_config(preset: str = "tiny", **overrides) -> DiTConfig:
    """A preset by name with keyword overrides, validated (unknown keys raise ``ConfigError``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    return from_dict(DiTConfig, {**PRESETS[preset], **overrides}, where=f"dit[{preset}]")


def replace(config: DiTConfig, **changes) -> DiTConfig:
    """A copy of ``config`` with ``changes`` applied and validated."""
    return dataclasses.replace(config, **changes)


def plain_dit_config(preset: str = "tiny", **overrides) -> PlainDiTConfig:
    """A cross-attention DiT preset by name with keyword overrides, validated."""
    if preset not in PLAIN_PRESETS:
        raise ValueError(f"unknown plain DiT preset {preset!r} "
                         f"(known: {', '.join(sorted(PLAIN_PRESETS))})")
    return from_dict(PlainDiTConfig, {**PLAIN_PRESETS[preset], **overrides}, where=f"plain[{preset}]")
