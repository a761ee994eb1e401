"""Sampling: Euler integration of the learned velocity with classifier-free guidance.

Convention (``vilearn.flow``): integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vilearn.flow.normalize import LatentStats
from vilearn.flow.timesteps import shift_sigma

VelocityModel = Callable[..., Tensor]  # (x_t (B,N,C), t (B,), cond, visible=...) -> (B, N, C)


def time_grid(steps: int, shift: float = 1.0, device=None) -> Tensor:
    """steps + 1 times from 0 to 1: t_i = 1 - shift_sigma(1 - i / steps). -> (steps + 1,)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sigma = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (1.0 - shift_sigma(sigma, shift)).float().to(device)


def cfg_velocity(
    model: VelocityModel,
    x: Tensor,
    t: Tensor,
    cond: Tensor,
    uncond: Tensor | None,
    cfg_scale: float,
    visible: Tensor | None,
) -> Tensor:
    """v_u + s * (v_c - v_u), conditional and unconditional in one batch; plain v_c when s = 1.

    x (B, N, C), t (B,), cond and uncond (B, L_c, D), visible (B, N) bool or None.
    """
    if cfg_scale == 1.0 or uncond is None:
        if cfg_scale != 1.0:
            raise ValueError(f"cfg_scale {cfg_scale} needs an unconditional input (uncond)")
        return model(x, t, cond, visible=visible)
    both_visible = None if visible is None else torch.cat((visible, visible))
    v_cond, v_uncond = model(
        torch.cat((x, x)), torch.cat((t, t)), torch.cat((cond, uncond)), visible=both_visible
    ).chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def euler_sample(
    model: VelocityModel,
    noise: Tensor,
    cond: Tensor,
    uncond: Tensor | None = None,
    *,
    steps: int = 50,
    shift: float = 1.0,
    cfg_scale: float = 1.0,
    visible: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Euler ODE solver (flux ``denoise``; k-diffusion ``sample_euler`` without churn).

    Args:
        model: velocity network ``model(x, t, cond, visible=...)``.
        noise: (B, N, C) starting point at t = 0.
        cond, uncond: (B, L_c, D) image tokens and the null condition for CFG.
        steps, shift: number of Euler steps and the SD3 shift of their times.
        cfg_scale: guidance scale s (1 = no guidance).
        visible: (B, N) bool visibility passed to every model call (inference: the fixed partition).
        progress: called as progress(step, steps) after each step.
    Returns:
        (B, N, C) samples at t = 1, in the normalised latent space.
    """
    x = noise
    times = time_grid(steps, shift, device=noise.device)
    batch = noise.shape[0]
    for i in range(steps):
        t = times[i].expand(batch).to(noise.dtype)
        v = cfg_velocity(model, x, t, cond, uncond, cfg_scale, visible)
        x = x + (times[i + 1] - times[i]) * v
        if progress is not None:
            progress(i + 1, steps)
    return x


def sample_latents(
    model: VelocityModel,
    cond: Tensor,
    uncond: Tensor | None = None,
    *,
    n_tokens: int,
    channels: int,
    steps: int = 50,
    shift: float = 1.0,
    cfg_scale: float = 5.0,
    seed: int = 0,
    visible: Tensor | None = None,
    stats: LatentStats | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Generate VAE latents for a batch of conditions; deterministic for a fixed seed.

    Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` so a seed gives the
    same noise on every device.

    Args:
        model: velocity network ``model(x, t, cond, visible=...)`` in eval mode.
        cond: (B, L_c, D) image tokens; uncond: the null condition (B, L_c, D) for CFG.
        n_tokens, channels: latent shape N and C.
        visible: (B, N) bool; for VAPE models pass ``MMDiT.inference_visibility(B, N)``.
        stats: latent statistics; samples are denormalised with them when given.
    Returns:
        (B, N, C) latents for the VAE decoder.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(cond.shape[0], n_tokens, channels, generator=generator)
    noise = noise.to(device=cond.device, dtype=cond.dtype)
    x = euler_sample(
        model,
        noise,
        cond,
        uncond,
        steps=steps,
        shift=shift,
        cfg_scale=cfg_scale,
        visible=visible,
        progress=progress,
    )
    return stats.denormalize(x) if stats is not None else x
