"""Training timestep densities (pure functions). Convention: ``vilearn.flow``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class TimestepConfig:
    """How training draws t.

    Attributes:
        density: ``uniform`` (sigma ~ U(0, 1)) or ``logit-normal`` (logit(sigma) ~ N(mean, std),
            SD3's default mean 0, std 1).
        logit_mean, logit_std: parameters of ``logit-normal``; a positive mean favours noisier t.
        shift: SD3 time shift applied to sigma after drawing (1 = none).
    """

    density: Literal["uniform", "logit-normal"] = "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {self.logit_std!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift!r}")


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """SD3 shift of the noise level: shift * sigma / (1 + (shift - 1) * sigma); keeps 0 and 1."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_timesteps(
    batch: int, config: TimestepConfig | None = None, generator=None, device=None
) -> Tensor:
    """Draw t (batch,) in (0, 1) (t = 1 - sigma) from ``config``'s density; float32."""
    config = config or TimestepConfig()
    if config.density == "uniform":
        sigma = torch.rand(batch, generator=generator)
    elif config.density == "logit-normal":
        normal = torch.randn(batch, generator=generator)
        sigma = torch.sigmoid(config.logit_mean + config.logit_std * normal)
    else:
        raise ValueError(f"timestep density {config.density!r} is not uniform or logit-normal")
    return (1.0 - shift_sigma(sigma, config.shift)).to(device)
