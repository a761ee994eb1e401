"""Surface samples with normals, sharp-edge samples, and occupancy supervision points, in the
normalised frame."""

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


def sharp_edges(vertices: np.ndarray, faces: np.ndarray,
                angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mesh's creases: edges shared by two faces whose normals differ by more than ``angle_deg``.

    Coincident vertices are merged first, so a mesh whose faces do not share vertices (as glTF
    files often store flat-shaded meshes) still has its creases found. Boundary edges (one face)
    are not creases.

    Returns:
        ends (E, 2, 3) float64 edge end points, normals (E, 3) float64 unit normal of each edge
        (the mean of its two faces' normals), lengths (E,) float64.
    """
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.merge_vertices()
    sharp = mesh.face_adjacency_angles > np.radians(angle_deg)
    ends = mesh.vertices[mesh.face_adjacency_edges[sharp]]
    pair = mesh.face_normals[mesh.face_adjacency[sharp]]  # (E, 2, 3)
    normals = pair.sum(axis=1)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    # a knife edge (faces folded back, ~180 degrees) has no mean direction: take one face's
    normals = np.where(norm > 1e-6, normals / np.maximum(norm, 1e-12), pair[:, 0])
    return ends, normals, np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1)


def sample_sharp_edges(
    vertices: np.ndarray, faces: np.ndarray, count: int, angle_deg: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points on the mesh's sharp edges (``sharp_edges``), uniform along their length.

    Hunyuan3D-2.1's data pipeline samples its sharp-edge point set the same way (an edge drawn
    with probability proportional to its length, a uniform position on it); it finds the edges
    from its vertices instead (both ends' normals more than ~10 degrees off an incident face's),
    which also takes the flat diagonals between two corner vertices: a cube's six face
    diagonals carry about 40% of its samples there, none here.

    Returns:
        points (K, 3) float32 and normals (K, 3) float32; K = ``count``, or 0 when the mesh has
        no sharp edge (a smooth shape).
    """
    ends, normals, lengths = sharp_edges(vertices, faces, angle_deg)
    if count == 0 or lengths.sum() <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    edge = rng.choice(len(lengths), size=count, p=lengths / lengths.sum())
    t = rng.random((count, 1))
    points = (1 - t) * ends[edge, 0] + t * ends[edge, 1]
    return points.astype(np.float32), normals[edge].astype(np.float32)


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
