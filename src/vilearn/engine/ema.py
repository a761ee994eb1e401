"""Exponential moving average of a model's floating-point parameters and buffers."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, with decay warmed up as
    ``min(decay, (1 + step) / (10 + step))`` so early averages are not stuck at the init.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, keys=None):
        """``keys``: the state-dict entries to average (default: every floating-point one);
        leave frozen weights out so they are not copied."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        keys = None if keys is None else set(keys)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point and (keys is None or k in keys)}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """One averaging step: a few fused kernels (``torch._foreach_lerp_``) for all tensors."""
        shadows, values = [], []
        for key, value in model.state_dict(keep_vars=True).items():  # no per-tensor detach op
            if key in self.shadow:
                if self.shadow[key].device != value.device:  # the model moved (accelerate.prepare)
                    self.shadow[key] = self.shadow[key].to(value.device)
                shadows.append(self.shadow[key])
                values.append(value if value.dtype == torch.float32 else value.float())
        if shadows:
            torch._foreach_lerp_(shadows, values, 1.0 - self.current_decay(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")
        self.shadow = {k: state[k].detach().clone().float() for k in self.shadow}

    def averaged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the EMA values in place (other entries as they are)."""
        return {k: self.shadow[k].to(device=v.device, dtype=v.dtype) if k in self.shadow else v
                for k, v in model.state_dict().items()}
