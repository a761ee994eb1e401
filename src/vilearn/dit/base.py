"""What both denoisers share around their blocks: input checks, block running with optional
gradient checkpointing, and the inference visibility of their VAPE."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vilearn.dit.vape import fixed_partition


class VelocityModel(nn.Module):
    """Base of ``MMDiT`` and ``PlainDiT``; ``config`` has ``in_channels``, ``context_in_dim``,
    ``vape`` and ``visible_ratio``."""

    gradient_checkpointing = False  # recompute each block in backward (saves memory)
    # An auxiliary training loss of the last training-mode forward, for the trainer to add
    # (the cross-attention DiT's MoE load balancing); None when the model has none.
    aux_loss: Tensor | None = None
    # Its linear layers by role: group name -> regular expression over full module names (the
    # LoRA targets of ``train.lora``); each denoiser names its own.
    LAYER_GROUPS: dict[str, str] = {}

    def _run(self, block: nn.Module, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def inference_visibility(self, batch: int, n_tokens: int, device=None) -> Tensor | None:
        """The paper's fixed partition for sampling (first ceil(N * r) visible), or None when
        this model's VAPE ignores visibility. -> (batch, n_tokens) bool."""
        if self.config.vape in ("none", "rope"):
            return None
        return fixed_partition(n_tokens, self.config.visible_ratio, batch, device=device)

    def _check_inputs(self, x: Tensor, t: Tensor, cond: Tensor) -> None:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.in_channels:
            raise ValueError(f"x must be (B, N, {c.in_channels}), got {tuple(x.shape)}")
        if cond.dim() != 3 or cond.shape[-1] != c.context_in_dim or cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"cond must be ({x.shape[0]}, L_c, {c.context_in_dim}), got {tuple(cond.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be ({x.shape[0]},), got {tuple(t.shape)}")
