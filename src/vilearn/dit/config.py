"""The MM-DiT's typed configuration and its named presets.

``DiTConfig`` mirrors the constructor of hy3dgen 2.0.2's ``Hunyuan3DDiT`` (so a Hunyuan3D-2
checkpoint maps onto it one to one) plus the VAPE switch. Presets are plain dicts of overrides so
a YAML file or CLI override can start from one: ``dit_config("paper-0.39b", vape="va-rope")``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from vilearn.config import from_dict

VapeKind = Literal["none", "va-rope", "va-lpe", "rope"]
VAPE_KINDS: tuple[str, ...] = ("none", "va-rope", "va-lpe", "rope")


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
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("depth", "depth_single_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim {self.head_dim} (hidden_size / num_heads) must be even for RoPE"
            )
        if self.vape not in VAPE_KINDS:
            raise ValueError(f"vape {self.vape!r} is not one of {', '.join(VAPE_KINDS)}")
        if not 0.0 <= self.visible_ratio <= 1.0:
            raise ValueError(f"visible_ratio must be in [0, 1], got {self.visible_ratio!r}")

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
}
PRESETS["paper-1.1b"] = PRESETS["hunyuan3d-2"]


def dit_config(preset: str = "tiny", **overrides) -> DiTConfig:
    """A preset by name with keyword overrides, validated (unknown keys raise ``ConfigError``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    return from_dict(DiTConfig, {**PRESETS[preset], **overrides}, where=f"dit[{preset}]")


def replace(config: DiTConfig, **changes) -> DiTConfig:
    """A copy of ``config`` with ``changes`` applied and validated."""
    return dataclasses.replace(config, **changes)
