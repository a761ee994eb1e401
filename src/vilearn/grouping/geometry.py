"""Geometry decoded from a token subset (the paper's Figure 2), and cameras to look at it.

``subset_mesh`` restricts the decoder's cross-attention to the tokens where ``key_mask`` is
True (``VecSetVAE.query(..., key_mask=)``): the transformer still ran over all tokens, as when
the full shape is decoded, and only the final cross-attention sees the subset.
"""

from __future__ import annotations

import numpy as np
import torch

from vilearn.data.camera import Camera
from vilearn.data.render import Raycaster
from vilearn.vae.extract import volume_grid
from vilearn.vae.surface import Mesh, marching_cubes
from vilearn.vae.volume import field_from_vae


@torch.no_grad()
def subset_mesh(vae, tokens: torch.Tensor, key_mask: torch.Tensor | None = None,
                resolution: int = 64, bounds: float = 1.01, chunk: int = 32768) -> Mesh:
    """The surface decoded from a subset of the tokens.

    Args:
        tokens: (1, N, W) decoded tokens (``vae.decode(latents)``).
        key_mask: (N,) bool, tokens to attend to; None = all.
    Raises:
        ValueError: the subset is empty, or its field has no surface in the box.
    """
    if key_mask is not None:
        if key_mask.shape != tokens.shape[1:2]:
            raise ValueError(f"key_mask must be ({tokens.shape[1]},), got {tuple(key_mask.shape)}")
        if not bool(key_mask.any()):
            raise ValueError("empty token subset: nothing to decode")
        key_mask = key_mask[None].to(tokens.device)
    field = field_from_vae(vae, tokens, key_mask)
    return marching_cubes(volume_grid(field, "dense", resolution, bounds, chunk))


def render_mesh(mesh: Mesh, camera: Camera, rgb: tuple[int, int, int] = (178, 178, 178)):
    """Ray-cast ``mesh`` from ``camera``: (image (H, W, 3) uint8 on white, depth (H, W) float32)."""
    colours = np.tile(np.asarray(rgb, np.uint8), (len(mesh.faces), 1))
    view = Raycaster(mesh.verts, mesh.faces, colours).render(camera)
    return view.rgb, view.depth


def sample_mesh(mesh: Mesh, count: int, seed: int = 0) -> np.ndarray:
    """Area-uniform surface samples (count, 3) float32."""
    from vilearn.data.sampling import sample_surface

    return sample_surface(mesh.verts, mesh.faces, count, np.random.default_rng(seed))[0]


def visible_from(camera: Camera, depth: np.ndarray, points: np.ndarray, tolerance: float) -> np.ndarray:
    """(P,) bool: points (P, 3) inside the image and not behind ``depth`` (H, W) by more than
    ``tolerance`` (camera-frame z); background pixels (depth 0) occlude nothing."""
    uv, z = camera.project(points)
    col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    inside = (z > 0) & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    first = np.full(len(points), np.inf)
    first[inside] = depth[row[inside], col[inside]]
    first[first == 0] = np.inf
    return inside & (z <= first + tolerance)
