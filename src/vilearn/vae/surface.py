"""Surface extraction (marching cubes on a VolumeGrid) and mesh export through trimesh."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vilearn.io import write_bytes
from vilearn.vae.volume import VolumeGrid

EXPORT_FORMATS = ("glb", "obj", "ply")


@dataclass
class Mesh:
    verts: np.ndarray  # (V, 3) float32, object frame
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside


def marching_cubes(grid: VolumeGrid, level: float = 0.0) -> Mesh:
    """Iso-surface of ``grid`` at ``level`` (inside = value > level), faces outward.

    Vertex coordinates are ``index * spacing - bounds`` (hy3dgen divides by R + 1 instead of R,
    which shrinks its meshes by a factor R / (R + 1); we do not copy that).
    """
    from skimage import measure

    values = grid.values.numpy()
    if not (values.min() < level < values.max()):
        raise ValueError(f"no surface: grid values span [{values.min():.3g}, {values.max():.3g}], "
                         f"which does not cross level {level}")
    verts, faces, _, _ = measure.marching_cubes(values, level, spacing=(grid.spacing,) * 3,
                                                method="lewiner")
    verts = (verts - grid.bounds).astype(np.float32)
    # skimage orients faces toward decreasing values; ours increase inward, so flip.
    faces = np.ascontiguousarray(faces[:, ::-1]).astype(np.int64)
    return Mesh(verts, faces)


def export_mesh(mesh: Mesh, path: str | Path) -> Path:
    """Write a .glb, .obj or .ply file atomically."""
    import trimesh

    path = Path(path)
    kind = path.suffix.lstrip(".").lower()
    if kind not in EXPORT_FORMATS:
        raise ValueError(f"{path}: unsupported mesh format {kind!r} "
                         f"(use {', '.join(EXPORT_FORMATS)})")
    data = trimesh.Trimesh(mesh.verts, mesh.faces, process=False).export(file_type=kind)
    write_bytes(path, data if isinstance(data, bytes) else data.encode())
    return path
