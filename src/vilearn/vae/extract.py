"""latents -> mesh: decode the tokens, grid them (dense or hierarchical), marching cubes."""

from __future__ import annotations

from typing import Literal

import torch

from vilearn.vae.surface import Mesh, marching_cubes
from vilearn.vae.volume import VolumeGrid, dense_grid, field_from_vae, hierarchical_grid

Method = Literal["dense", "hierarchical"]


def volume_grid(field, method: Method = "hierarchical", resolution: int = 256,
                bounds: float = 1.01, chunk: int = 65536, coarse_resolution: int = 64,
                level: float = 0.0) -> VolumeGrid:
    """Dispatch to ``dense_grid`` or ``hierarchical_grid`` by name."""
    if method == "dense":
        return dense_grid(field, resolution, bounds, chunk)
    if method == "hierarchical":
        coarse = min(coarse_resolution, resolution)
        return hierarchical_grid(field, resolution, bounds, coarse, level=level, chunk=chunk)
    raise ValueError(f"unknown volume decoding method {method!r} (dense or hierarchical)")


@torch.no_grad()
def latents_to_mesh(vae, latents: torch.Tensor, method: Method = "hierarchical",
                    resolution: int = 256, bounds: float = 1.01, chunk: int = 65536,
                    coarse_resolution: int = 64, level: float = 0.0) -> tuple[Mesh, VolumeGrid]:
    """One shape's latents (N, C) or (1, N, C) -> its mesh and the grid it came from."""
    if latents.ndim == 2:
        latents = latents[None]
    param = next(vae.parameters())
    tokens = vae.decode(latents.to(device=param.device, dtype=param.dtype))
    grid = volume_grid(field_from_vae(vae, tokens), method, resolution, bounds, chunk,
                       coarse_resolution, level)
    return marching_cubes(grid, level), grid
