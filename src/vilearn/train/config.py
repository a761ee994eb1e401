"""Typed configuration of ``vilearn train`` (the diffusion model). One YAML file; sections:

```yaml
dataset: data/urdfs            # a prepared dataset with encoded latents and groups
vae: runs/vae-tiny             # the VAE (run, checkpoint or weights) that made the latents
vae_name: null                 # readable part of its latents folder <name>-<hash8> (default: from vae)
init: {dit: null, conditioner: true, check_vae: true}   # start from released weights
latent_norm: dataset           # dataset: per-channel stats; vae: the VAE's scale_factor (Hunyuan3D)
model: {arch: mmdit, preset: tiny, vape: va-rope, ...}   # arch mmdit (DiTConfig) or plain
                               # (PlainDiTConfig, Hunyuan3D-2.1's); any key of that class
conditioner: {kind: patch, image_size: 64, ...}
timesteps: {density: logit-normal, ...}
optim: {lr: 1.0e-4, warmup_steps: 100, ...}
stages: [{tokens: 256, steps: 1000, batch_size: 16}, ...]   # progressive token schedule
train: {seed: 0, grad_accum: 1, precision: auto, lora: null, ...}   # lora: {rank, alpha, ...}
val: {every: 500, shapes: 16, ...}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from vilearn.config import AtLeastOne, Decay, Fraction, NonNegative, Positive, Range
from vilearn.dit.conditioner import ConditionerConfig
from vilearn.dit.config import DiTConfig, PlainDiTConfig, denoiser_config
from vilearn.flow.timesteps import TimestepConfig


@dataclass
class StageConfig:
    """One stage of the progressive schedule: ``steps`` optimizer steps at ``tokens`` tokens."""

    tokens: Annotated[int, AtLeastOne]
    steps: Annotated[int, AtLeastOne]
    batch_size: Annotated[int, AtLeastOne]

    def __post_init__(self) -> None:
        if min(self.tokens, self.steps, self.batch_size) < 1:
            raise ValueError(f"tokens, steps and batch_size must be positive, got {self}")


@dataclass
class OptimConfig:
    lr: Annotated[float, Positive] = 1e-4  # the paper's
    betas: list[Annotated[float, Decay]] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: Annotated[float, NonNegative] = 0.0
    warmup_steps: Annotated[int, NonNegative] = 100
    decay: Literal["cosine", "linear", "constant"] = "constant"
    min_lr_ratio: Annotated[float, Fraction] = 1.0  # the LR decays to lr * min_lr_ratio
    grad_clip: Annotated[float, NonNegative] = 1.0  # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class LoRAConfig:
    """``train.lora``: LoRA adapters (peft) on the denoiser's linear layers.

    The denoiser's pretrained weights (``init.dit``) stay frozen; trained are the adapters,
    VAPE's own parameters (va-lpe's embeddings) and any layer the init weights do not have.

    Attributes:
        rank: r, the adapters' rank.
        alpha: the adapters' output is scaled by alpha / rank.
        dropout: dropout on the adapters' input.
        targets: the layers that get adapters: group names of the denoiser's
            ``LAYER_GROUPS`` (both: ``attention``, ``mlp`` (MoE experts included),
            ``embedders``; the MM-DiT: ``modulation``; the cross-attention DiT: ``skips``), or
            regular expressions matched against full module names (``double_blocks\\.[0-3]\\..*qkv``).
    """

    rank: Annotated[int, AtLeastOne] = 16
    alpha: Annotated[float, Positive] = 16.0
    dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    targets: list[str] = field(default_factory=lambda: ["attention"])

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(self.targets):
            raise ValueError(f"targets must name at least one layer group or pattern, got {self.targets}")


@dataclass
class InitConfig:
    """``init``: the weights fine-tuning starts from.

    Attributes:
        dit: a released denoiser folder as published, e.g. ``.../tencent/Hunyuan3D-2/
            hunyuan3d-dit-v2-0`` (``config.yaml`` + ``model.fp16.safetensors`` or
            ``model.fp16.ckpt``), or one written by ``vilearn export``. Empty: random init.
        conditioner: also load the image encoder's weights from it when it carries them
            (Hunyuan3D's checkpoints do), over those of ``conditioner.model``.
        check_vae: refuse a ``vae`` other than the one the release's denoiser was trained with,
            as far as the release says (its checkpoint's VAE part, config.yaml's scale_factor
            with ``latent_norm: vae``); false: warn instead.
    """

    dit: str = ""
    conditioner: bool = True
    check_vae: bool = True


@dataclass
class LoopConfig:
    seed: Annotated[int, NonNegative] = 0
    grad_accum: Annotated[int, AtLeastOne] = 1  # micro-batches per optimizer step
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    ema_decay: Annotated[float, Decay] = 0.999
    gradient_checkpointing: bool = False
    compile: bool = False
    posterior: Literal["sample", "mean"] = "sample"  # latents: a posterior sample or its mean
    # Which shape tokens the model is told are visible in training: the view's VST, or (the
    # benchmark's control) a random group of the same size, which tells whether a gain comes
    # from visibility or from the rotation itself.
    visibility: Literal["vst", "random"] = "vst"
    workers: Annotated[int, NonNegative] = 0  # DataLoader worker processes
    # batches each worker keeps ready (DataLoader's prefetch_factor; with workers > 0): more
    # rides out slow items, at prefetch_factor x workers batches of memory
    prefetch_factor: Annotated[int, Range(1, 16)] = 2
    lora: LoRAConfig | None = None  # LoRA fine-tuning of the denoiser (needs init.dit)
    log_every: Annotated[int, AtLeastOne] = 10
    ckpt_every: Annotated[int, AtLeastOne] = 500
    keep_checkpoints: Annotated[int, AtLeastOne] = 3

    def __post_init__(self) -> None:
        if self.grad_accum < 1 or self.log_every < 1 or self.ckpt_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("grad_accum, log_every, ckpt_every and keep_checkpoints must be >= 1")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 1 <= self.prefetch_factor <= 16:
            raise ValueError(f"prefetch_factor must be in [1, 16], got {self.prefetch_factor}")


@dataclass
class ValConfig:
    every: Annotated[int, NonNegative] = 500  # held-out flow loss every N steps (0: never)
    shapes: Annotated[int, AtLeastOne] = 16  # held-out (shape, view) pairs, fixed for the whole run
    timesteps: Annotated[int, AtLeastOne] = 4  # fixed t values per pair: (i + 0.5) / timesteps
    seed: Annotated[int, NonNegative] = 1234  # fixed noise
    sample_every: Annotated[int, NonNegative] = 0  # generated-mesh grid every N steps (0: never)
    sample_count: Annotated[int, AtLeastOne] = 4
    sample_steps: Annotated[int, AtLeastOne] = 25
    cfg_scale: Annotated[float, NonNegative] = 3.0
    resolution: Annotated[int, Range(8)] = 64  # mesh extraction grid


@dataclass
class TrainConfig:
    dataset: str = ""
    vae: str = ""
    vae_name: str | None = None  # as given to 'vilearn encode --name'; the hash part is the VAE's
    init: InitConfig = field(default_factory=InitConfig)
    # How latents are scaled for the diffusion model: per-channel statistics of the dataset, or
    # (``vae``) times the VAE's scale_factor, the convention Hunyuan3D's denoisers were trained in.
    latent_norm: Literal["dataset", "vae"] = "dataset"
    model: dict = field(default_factory=lambda: {"preset": "tiny"})
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(256, 1000, 8)])
    train: LoopConfig = field(default_factory=LoopConfig)
    val: ValConfig = field(default_factory=ValConfig)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one (tokens, steps, batch_size) stage is required")
        _ = self.dit  # validates the model section now, naming a bad key
        if self.train.lora is not None and not self.init.dit:
            raise ValueError("train.lora: LoRA adapts pretrained weights; set init.dit (a released "
                             "denoiser folder) or remove train.lora")

    @property
    def dit(self) -> DiTConfig | PlainDiTConfig:
        """The denoiser's config: ``model.arch``'s class (``mmdit`` by default, or ``plain``),
        ``model.preset``'s values overridden by the other keys."""
        return denoiser_config(self.model, where="model")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_at(self, step: int) -> tuple[int, StageConfig, int]:
        """(stage index, stage, first global step of that stage) for optimizer step ``step``."""
        start = 0
        for index, stage in enumerate(self.stages):
            if step < start + stage.steps:
                return index, stage, start
            start += stage.steps
        return len(self.stages) - 1, self.stages[-1], start - self.stages[-1].steps
