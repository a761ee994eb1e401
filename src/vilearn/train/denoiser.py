"""The trainable whole: image conditioner + denoiser (MM-DiT or cross-attention DiT), one module
for Accelerate, EMA and saving."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vilearn.dit.conditioner import ImageConditioner
from vilearn.dit.model import MMDiT
from vilearn.dit.plain import PlainDiT


class Denoiser(nn.Module):
    """``forward(x_t, t, images, visible)`` = ``dit(x_t, t, conditioner(images), visible)``.

    With ``conditioner.cached`` the condition it takes is the cached encoder tokens instead of
    the images (what ``LatentViewDataset`` yields then), given the same CFG dropout.
    """

    def __init__(self, dit: MMDiT | PlainDiT, conditioner: ImageConditioner):
        super().__init__()
        self.dit, self.conditioner = dit, conditioner
        # State keys restored from the init weights, not saved (a LoRA run's frozen base).
        self.frozen: set[str] = set()
        self.lora_config = None  # peft's LoraConfig of a LoRA run (``vilearn.train.lora``)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, visible: Tensor | None = None,
                generator: torch.Generator | None = None, drop: Tensor | None = None) -> Tensor:
        """x (B, N, C), t (B,), cond: images (B, 3, S, S) or, cached, tokens (B, L_c, D),
        visible (B, N) bool -> velocity (B, N, C). In training mode the condition dropout is
        ``drop`` (B,) bool when given, else drawn from ``generator``."""
        if self.conditioner.config.cached:
            tokens = self.conditioner.condition(cond, generator=generator, drop=drop)
        else:
            tokens = self.conditioner(cond, generator=generator, drop=drop)
        return self.dit(x, t, tokens, visible=visible)

    def auxiliary_loss(self) -> Tensor | None:
        """The denoiser's auxiliary training loss from the last forward (the cross-attention
        DiT's weighted MoE load balancing), or None; taken once, so the graph is not kept."""
        loss, self.dit.aux_loss = self.dit.aux_loss, None
        return loss

    def _restored(self, key: str) -> bool:
        """Whether ``key`` comes from elsewhere than the run: a frozen pretrained image encoder,
        a LoRA run's frozen base."""
        frozen_encoder = self.conditioner.frozen
        return (frozen_encoder and key.startswith("conditioner.encoder.")) or key in self.frozen

    def trainable_state(self) -> dict[str, Tensor]:
        """The state worth saving: everything but what ``_restored`` names."""
        return {k: v for k, v in self.state_dict().items() if not self._restored(k)}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not self._restored(k)]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
