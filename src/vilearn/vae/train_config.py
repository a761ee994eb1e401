"""Typed configuration of ``vilearn train-vae`` (one YAML file, sections below)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from vilearn.config import AtLeastOne, Decay, Fraction, NonNegative, Positive, Range
from vilearn.vae.config import PRESETS, VAEConfig


@dataclass
class VAEDataConfig:
    num_surface: Annotated[int, AtLeastOne] = 4096  # surface points fed to the encoder per shape
    num_queries: Annotated[int, AtLeastOne] = 4096  # supervision points per shape
    near_fraction: Annotated[float, Fraction] = 0.5  # share of queries taken from the near-surface set
    tokens: list[Annotated[int, AtLeastOne]] = field(default_factory=lambda: [256])  # N drawn per step
    tsdf_truncation: Annotated[float, Positive] = 0.05  # only for label_type "tsdf"

    def __post_init__(self) -> None:
        if not 0.0 <= self.near_fraction <= 1.0:
            raise ValueError(f"near_fraction must be in [0, 1], got {self.near_fraction}")
        if not self.tokens or min(self.tokens) < 1 or max(self.tokens) > self.num_surface:
            raise ValueError(f"tokens {self.tokens} must be in [1, num_surface={self.num_surface}]")


@dataclass
class OptimConfig:
    lr: Annotated[float, Positive] = 1e-3
    weight_decay: Annotated[float, NonNegative] = 0.01
    betas: list[Annotated[float, Decay]] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: Annotated[int, NonNegative] = 100
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: Annotated[float, Fraction] = 0.1  # the LR decays to lr * min_lr_ratio
    grad_clip: Annotated[float, NonNegative] = 1.0  # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class LoopConfig:
    steps: Annotated[int, AtLeastOne] = 2000  # length of the run (the LR schedule ends here)
    batch_size: Annotated[int, AtLeastOne] = 4  # global batch, split across processes
    seed: Annotated[int, NonNegative] = 0
    kl_weight: Annotated[float, NonNegative] = 1e-3
    ema_decay: Annotated[float, Decay] = 0.999
    precision: Literal["auto", "bf16", "no"] = "auto"  # auto: bf16 on a bf16-capable GPU
    log_every: Annotated[int, AtLeastOne] = 10
    val_every: Annotated[int, AtLeastOne] = 500
    ckpt_every: Annotated[int, AtLeastOne] = 500
    keep_checkpoints: Annotated[int, AtLeastOne] = 3


@dataclass
class ValConfig:
    shapes: Annotated[int, AtLeastOne] = 4  # held-out shapes scored at each validation
    tokens: Annotated[int, NonNegative] = 0  # 0: the largest of data.tokens
    resolution: Annotated[int, Range(8)] = 64  # mesh extraction grid for Chamfer / F-score
    fscore_threshold: Annotated[float, Positive] = 0.02
    mesh_points: Annotated[int, AtLeastOne] = 10000
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
