"""Volume decoding and mesh extraction against analytic shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vilearn.vae.surface import export_mesh, marching_cubes
from vilearn.vae.volume import (
    CountingField,
    dense_grid,
    field_from_decoder,
    grid_iou,
    hierarchical_grid,
)


class SphereDecoder(nn.Module):
    """An analytic 'geometry decoder' with hy3dgen's interface: logits = k (r - |x - c|)."""

    def __init__(self, radius: float = 0.6, center=(0.05, -0.1, 0.0), sharpness: float = 20.0):
        super().__init__()
        self.radius, self.sharpness = radius, sharpness
        self.register_buffer("center", torch.tensor(center))

    def forward(self, queries=None, latents=None):
        dist = (queries - self.center).norm(dim=-1, keepdim=True)
        return self.sharpness * (self.radius - dist)  # (B, Q, 1)


def box_and_sphere(points: torch.Tensor) -> torch.Tensor:
    """Union of a sphere and a thin-ish box (0.1 thick): a shape with a flat plate."""
    sphere = 0.45 - (points - torch.tensor([-0.3, 0.0, 0.0])).norm(dim=-1)
    half = torch.tensor([0.4, 0.5, 0.05])
    box = -((points - torch.tensor([0.4, 0.0, 0.0])).abs() - half).max(dim=-1).values
    return 10 * torch.maximum(sphere, box)


def sphere_field():
    decoder = SphereDecoder()
    return decoder, field_from_decoder(decoder, torch.zeros(1, 1, 1))


def test_dense_sphere_extracts_with_the_right_radius(tmp_path):
    decoder, field = sphere_field()
    grid = dense_grid(field, resolution=64, chunk=10000)
    assert grid.values.shape == (65, 65, 65) and grid.queries == 65 ** 3
    mesh = marching_cubes(grid)
    radii = np.linalg.norm(mesh.verts - decoder.center.numpy(), axis=1)
    assert abs(radii.mean() - 0.6) < 2e-3 and radii.std() < 5e-3
    import trimesh

    tm = trimesh.Trimesh(mesh.verts, mesh.faces)
    assert tm.is_watertight
    assert tm.volume == pytest.approx(4 / 3 * np.pi * 0.6 ** 3, rel=0.02)  # > 0: faces outward
    for suffix in ("glb", "obj", "ply"):
        loaded = trimesh.load(export_mesh(mesh, tmp_path / f"sphere.{suffix}"), force="mesh")
        assert len(loaded.faces) == len(mesh.faces)


@pytest.mark.parametrize("shape", ["sphere", "box_and_sphere"])
def test_hierarchical_matches_dense_with_far_fewer_queries(shape):
    field = sphere_field()[1] if shape == "sphere" else box_and_sphere
    dense = dense_grid(field, resolution=128)
    counter = CountingField(field)
    fast = hierarchical_grid(counter, resolution=128, coarse_resolution=32)
    assert fast.queries == counter.queries
    assert grid_iou(dense, fast) >= 0.99
    assert fast.queries < dense.queries / 4
    # Next to the surface every point was evaluated, so the values there are the dense ones.
    near = dense.values.abs() < 0.5
    assert near.sum() > 1000
    assert torch.allclose(fast.values[near], dense.values[near], atol=1e-5)


def test_hierarchical_rejects_a_resolution_that_is_not_a_power_of_two_multiple():
    with pytest.raises(ValueError, match="power of two"):
        hierarchical_grid(box_and_sphere, resolution=100, coarse_resolution=32)


def test_no_surface_is_a_clear_error():
    grid = dense_grid(lambda p: -torch.ones(len(p)), resolution=8)
    with pytest.raises(ValueError, match="no surface"):
        marching_cubes(grid)
