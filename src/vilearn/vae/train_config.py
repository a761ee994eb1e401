"""Typed configuration of ``vilearn train-vae`` (one YAML file, sections below)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vilearn.vae.config import PRESETS, VAEConfig


@dataclass
class VAEDataConfig:
    num_surface: int = 4096  # surface points fed to the encoder per shape
    num_queries: int = 4096  # supervision points per shape
    near_fraction: float = 0.5  # share of queries taken from the near-surface set
    tokens: list[int] = field(default_factory=lambda: [256])  # N drawn per step from this set
    tsdf_truncation: float = 0.05  # only for label_type "tsdf"

    def __post_init__(self) -> None:
        if not 0.0 <= self.near_fraction <= 1.0:
            raise ValueError(f"near_fraction must be in [0, 1], got {self.near_fraction}")
        if not self.tokens or min(self.tokens) < 1 or max(self.tokens) > self.num_surface:
            raise ValueError(f"tokens {self.tokens} must be in [1, num_surface={self.num_surface}]")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class LoopConfig:
    steps: int = 2000  # length of the run (the LR schedule ends here)
    batch_size: int = 4  # global batch, split across processes
    seed: int = 0
    kl_weight: float = 1e-3
    ema_decay: float = 0.999
    precision: Literal["auto", "bf16", "no"] = "auto"  # auto: bf16 on a bf16-capable GPU
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 3


@dataclass
class ValConfig:
    shapes: int = 4  # held-out shapes scored at each validation
    tokens: int = 0  # 0: the largest of data.tokens
    resolution: int = 64  # mesh extraction grid for Chamfer / F-score
    fscore_threshold: float = 0.02
    mesh_points: int = 10000
    posterior: Literal["sample", "mean"] = "sample"  # see vilearn.vae.validate.predict


@dataclass
class TrainVAEConfig:
    model: VAEConfig = field(default_factory=lambda: PRESETS["tiny"])
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    val: ValConfig = field(default_factory=ValConfig)

    def __post_init__(self) -> None:
        if not self.model.with_encoder:
            raise ValueError("model.with_encoder must be true to train a VAE")
