"""Latent normalisation from saved per-channel statistics.

The statistics file is JSON: ``{"mean": [C floats], "std": [C floats]}`` (other keys, such as
the token count or the number of shapes, are allowed and ignored). The diffusion model works on
``(latent - mean) / std``; samples are mapped back with ``denormalize`` before decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean and std of the VAE's latents: two (C,) float32 tensors."""

    mean: Tensor
    std: Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.dim() != 1:
            raise ValueError(
                f"latent stats need mean and std of the same (C,) shape, "
                f"got {tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        if self.std.device.type != "meta" and not bool((self.std > 0).all()):
            raise ValueError("latent stats: every std must be positive")

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def from_dict(cls, data: dict, where: str = "latent stats") -> LatentStats:
        for key in ("mean", "std"):
            if key not in data:
                raise ValueError(f"{where}: missing key {key!r} (expected 'mean' and 'std' lists)")
        mean = torch.tensor(data["mean"], dtype=torch.float32)
        std = torch.tensor(data["std"], dtype=torch.float32)
        try:
            return cls(mean, std)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error

    @classmethod
    def load(cls, path: str | Path) -> LatentStats:
        """Read a stats.json file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"latent stats {path}: cannot read ({error})") from error
        return cls.from_dict(data, where=f"latent stats {path}")

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def compute(cls, latents: Tensor) -> LatentStats:
        """Statistics of latents (..., C) over every axis but the last (float64 accumulation)."""
        flat = latents.reshape(-1, latents.shape[-1]).double()
        return cls(flat.mean(0).float(), flat.std(0).float())

    @classmethod
    def identity(cls, channels: int, scale: float = 1.0) -> LatentStats:
        """Mean 0, std 1/scale (Hunyuan3D-2: ``identity(64, 0.9990943)``, its scale_factor)."""
        return cls(torch.zeros(channels), torch.full((channels,), 1.0 / scale))

    def to(self, device: torch.device | str) -> LatentStats:
        """The same statistics on ``device`` (the training loop moves them once: a per-step
        host-to-device copy would make every step wait for the device)."""
        return LatentStats(self.mean.to(device), self.std.to(device))

    def normalize(self, latents: Tensor) -> Tensor:
        """(..., C) VAE latents -> (..., C) zero-mean unit-std diffusion targets."""
        self._check(latents)
        return (latents - self.mean.to(latents)) / self.std.to(latents)

    def denormalize(self, latents: Tensor) -> Tensor:
        """Inverse of ``normalize``."""
        self._check(latents)
        return latents * self.std.to(latents) + self.mean.to(latents)

    def _check(self, latents: Tensor) -> None:
        if latents.shape[-1] != self.channels:
            raise ValueError(
                f"latents have {latents.shape[-1]} channels but the stats have {self.channels}"
            )
