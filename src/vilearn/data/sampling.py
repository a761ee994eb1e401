"""Surface samples with normals and occupancy supervision points, in the normalised frame."""

from __future__ import annotations

import numpy as np
import trimesh

from vilearn.data.inside import inside


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted uniform surface samples (trimesh), with their unit face normals.

    Returns:
        points (count, 3) float32 and normals (count, 3) float32.
    """
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if mesh.area <= 0:
        raise ValueError("mesh has zero surface area")
    points, face_index = trimesh.sample.sample_surface(mesh, count, seed=rng)
    normals = np.asarray(mesh.face_normals)[face_index]
    return np.asarray(points, np.float32), normals.astype(np.float32)


def uniform_points(count: int, rng: np.random.Generator, bound: float = 1.0) -> np.ndarray:
    """count points uniform in [-bound, bound]^3, (count, 3) float32."""
    return rng.uniform(-bound, bound, size=(count, 3)).astype(np.float32)


def near_surface_points(
    surface: np.ndarray, count: int, sigmas: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """Surface samples jittered by isotropic Gaussian noise, count split evenly over ``sigmas``.

    surface (S, 3) -> (count, 3) float32, clipped to [-1, 1]^3.
    """
    splits = np.array_split(np.arange(count), len(sigmas))
    out = []
    for sigma, index in zip(sigmas, splits):
        base = surface[rng.integers(0, len(surface), size=len(index))]
        out.append(base + rng.normal(0.0, sigma, size=base.shape))
    return np.clip(np.concatenate(out), -1.0, 1.0).astype(np.float32)


def occupancy_samples(
    vertices: np.ndarray,
    faces: np.ndarray,
    surface: np.ndarray,
    num_uniform: int,
    num_near: int,
    near_sigmas: tuple[float, ...],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Uniform and near-surface query points with inside labels from winding numbers.

    Returns ``uniform_points`` (U, 3), ``uniform_labels`` (U,) bool, ``near_points`` (M, 3),
    ``near_labels`` (M,) bool.
    """
    uniform = uniform_points(num_uniform, rng)
    near = near_surface_points(surface, num_near, near_sigmas, rng)
    labels = inside(vertices, faces, np.concatenate([uniform, near]))
    return {
        "uniform_points": uniform,
        "uniform_labels": labels[:num_uniform],
        "near_points": near,
        "near_labels": labels[num_uniform:],
    }
