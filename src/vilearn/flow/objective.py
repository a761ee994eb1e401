"""The flow-matching objective: straight path, velocity target, MSE (see ``vilearn.flow``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from vilearn.flow.timesteps import TimestepConfig, sample_timesteps

VelocityModel = Callable[..., Tensor]  # (x_t (B,N,C), t (B,), cond, visible=...) -> (B, N, C)


def interpolate(x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) * noise + t * x. x, noise (B, N, C); t (B,) -> (B, N, C)."""
    t = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (1 - t) * noise + t * x


def velocity_target(x: Tensor, noise: Tensor) -> Tensor:
    """dx_t/dt = x - noise. (B, N, C)."""
    return x - noise


class FlowLoss(NamedTuple):
    loss: Tensor  # () mean over everything: what to backpropagate
    per_sample: Tensor  # (B,) detached, for logging by timestep bucket
    t: Tensor  # (B,) the timesteps used


def flow_matching_loss(
    model: VelocityModel,
    x: Tensor,
    cond: Tensor,
    visible: Tensor | None = None,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    timesteps: TimestepConfig | None = None,
    generator: torch.Generator | None = None,
) -> FlowLoss:
    """MSE between ``model(x_t, t, cond, visible=visible)`` and the velocity x - noise.

    Args:
        model: the velocity network (e.g. ``vilearn.dit.MMDiT``).
        x: (B, N, C) normalised clean latents (``LatentStats.normalize``).
        cond: (B, L_c, D) image tokens (already CFG-dropped by the conditioner).
        visible: (B, N) bool visibility of the shape tokens (from the VST), passed through.
        t, noise: fixed timesteps (B,) and noise (B, N, C), e.g. for a comparable validation
            loss; drawn from ``timesteps`` and ``generator`` (on the CPU, then moved) when None.
    """
    if t is None:
        t = sample_timesteps(x.shape[0], timesteps, generator=generator, device=x.device)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if noise.shape != x.shape or t.shape != (x.shape[0],):
        raise ValueError(
            f"noise must be {tuple(x.shape)} and t ({x.shape[0]},), "
            f"got {tuple(noise.shape)} and {tuple(t.shape)}"
        )
    prediction = model(interpolate(x, noise, t), t, cond, visible=visible)
    error = (prediction.float() - velocity_target(x, noise).float()) ** 2
    per_sample = error.flatten(1).mean(1)
    return FlowLoss(per_sample.mean(), per_sample.detach(), t)
