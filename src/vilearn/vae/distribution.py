"""The KL bottleneck's diagonal Gaussian posterior (hy3dshape's conventions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DiagonalGaussian:
    """N(mean, exp(logvar)) per token channel; mean and logvar are (B, N, C).

    ``logvar`` is clamped to [-30, 20] as in hy3dshape's DiagonalGaussianDistribution.
    """

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """moments (B, N, 2C) = [mean, logvar] on the last axis."""
        mean, logvar = moments.chunk(2, dim=-1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) averaged over tokens and channels: (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean(dim=(1, 2))
