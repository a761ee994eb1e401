"""Mesh sources, loading, validation and normalisation into the [-1, 1]^3 object frame."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
PYBULLET_PREFIX = "pybullet:"


class MeshError(ValueError):
    """A mesh cannot be used; the message says why (it is recorded in the manifest)."""


@dataclass
class Mesh:
    """A triangle mesh with optional colours.

    vertices (V, 3) float64, faces (F, 3) int64, vertex_colors (V, 3) uint8 or None,
    face_colors (F, 3) uint8 or None (face colours win when both are present).
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None
    face_colors: np.ndarray | None = None

    def to_trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices, self.faces, process=False)

    def face_rgb(self, default=(178, 178, 178)) -> np.ndarray:
        """(F, 3) uint8 base colour per face: face colours, else the mean of its vertices', else grey."""
        if self.face_colors is not None:
            return self.face_colors
        if self.vertex_colors is not None:
            return self.vertex_colors[self.faces].mean(axis=1).astype(np.uint8)
        return np.tile(np.asarray(default, np.uint8), (len(self.faces), 1))


@dataclass(frozen=True)
class Source:
    """One asset to prepare: a stable ``id``, the mesh ``path``, an optional flat ``color``."""

    id: str
    path: Path
    color: tuple[int, int, int] | None = None


def shape_id(relative: Path) -> str:
    """A stable, filesystem-safe id from a path relative to the source root (suffix dropped)."""
    text = "__".join(relative.with_suffix("").parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def pybullet_root(name: str) -> Path:
    import pybullet_data

    root = Path(pybullet_data.getDataPath()) / name
    if not root.is_dir():
        raise FileNotFoundError(f"source 'pybullet:{name}': no folder {root} in pybullet_data")
    return root


def _urdf_color(urdf: Path) -> tuple[int, int, int] | None:
    try:
        rgba = ET.parse(urdf).find(".//visual/material/color")
    except ET.ParseError:
        return None
    if rgba is None:
        return None
    values = [float(x) for x in rgba.get("rgba", "").split()[:3]]
    return tuple(int(round(255 * min(max(v, 0.0), 1.0))) for v in values) if len(values) == 3 else None


def _pybullet_sources(name: str) -> Iterator[Source]:
    root = pybullet_root(name)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in MESH_SUFFIXES:
            urdf = path.with_suffix(".urdf")
            color = _urdf_color(urdf) if urdf.is_file() else None
            relative = path.relative_to(root)
            if relative.parent.name == relative.stem:  # random_urdfs/000/000.obj -> "000"
                relative = relative.parent
            yield Source(shape_id(relative), path, color)


def iter_sources(source: str | Path) -> Iterator[Source]:
    """The assets of ``source``: a folder searched recursively, or ``pybullet:random_urdfs``.

    Sources come sorted by path, so ``--limit K`` always takes the same K assets.
    """
    text = str(source)
    if text.startswith(PYBULLET_PREFIX):
        yield from _pybullet_sources(text[len(PYBULLET_PREFIX):])
        return
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"source {text!r}: not a folder (and not 'pybullet:<folder>')")
    seen: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in MESH_SUFFIXES:
            sid = shape_id(path.relative_to(root))
            if sid in seen:  # a.obj next to a.glb: keep both, apart
                sid = f"{sid}_{path.suffix.lower().lstrip('.')}"
            seen[sid] = path
            yield Source(sid, path)


def _colors_of(geometry: trimesh.Trimesh) -> tuple[np.ndarray | None, np.ndarray | None]:
    visual = geometry.visual
    try:
        if visual.kind == "texture":
            visual = visual.to_color()
        if visual.kind == "face":
            return None, np.asarray(visual.face_colors)[:, :3].astype(np.uint8)
        if visual.kind == "vertex":
            return np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8), None
    except Exception:  # noqa: BLE001  (a broken texture must not lose the geometry)
        return None, None
    return None, None


def load_mesh(path: str | Path, color: tuple[int, int, int] | None = None) -> Mesh:
    """Load any trimesh-readable file; scenes are flattened with their node transforms.

    Raises:
        MeshError: the file is empty, unreadable, or holds no triangles.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshError("no such file")
    if path.stat().st_size == 0:
        raise MeshError("empty file (0 bytes)")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as error:  # noqa: BLE001  (loaders raise anything on garbage input)
        raise MeshError(f"not a readable mesh ({type(error).__name__}: {error})") from error
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        parts = []
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        raise MeshError("no triangle faces")
    vertices, faces, vcols, fcols, offset = [], [], [], [], 0
    any_vertex = any_face = False
    for part in parts:
        vertex_colors, face_colors = _colors_of(part)
        any_vertex |= vertex_colors is not None
        any_face |= face_colors is not None
        vertices.append(np.asarray(part.vertices, np.float64))
        faces.append(np.asarray(part.faces, np.int64) + offset)
        vcols.append(vertex_colors)
        fcols.append(face_colors)
        offset += len(part.vertices)
    mesh = Mesh(np.concatenate(vertices), np.concatenate(faces))
    if color is not None:
        mesh.face_colors = np.tile(np.asarray(color, np.uint8), (len(mesh.faces), 1))
    elif any_face or any_vertex:
        grey = np.uint8(178)
        per_face = []
        for part, vc, fc in zip(parts, vcols, fcols):
            if fc is not None:
                per_face.append(fc)
            elif vc is not None:
                per_face.append(vc[np.asarray(part.faces)].mean(axis=1).astype(np.uint8))
            else:
                per_face.append(np.full((len(part.faces), 3), grey, np.uint8))
        mesh.face_colors = np.concatenate(per_face)
    return mesh


def validate(mesh: Mesh, max_faces: int, min_thickness: float) -> None:
    """Raise MeshError naming the problem when the mesh cannot give a volume.

    Checks: finite vertices, faces present, valid indices, at most ``max_faces`` faces,
    non-zero extent, and a thickness (smallest / largest bounding-box extent) of at least
    ``min_thickness``: a flat mesh has no inside, so occupancy is undefined for it.
    """
    v, f = mesh.vertices, mesh.faces
    if len(f) == 0:
        raise MeshError("no faces")
    if len(f) > max_faces:
        raise MeshError(f"too many faces: {len(f):,} > max_faces {max_faces:,} (decimate it first)")
    if f.ndim != 2 or f.shape[1] != 3:
        raise MeshError(f"faces must be triangles, got shape {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"face indices out of range [0, {len(v)})")
    used = v[np.unique(f)]
    if not np.isfinite(used).all():
        bad = int((~np.isfinite(used).all(axis=1)).sum())
        raise MeshError(f"{bad} vertices are NaN or infinite")
    extent = used.max(axis=0) - used.min(axis=0)
    if extent.max() <= 1e-12:
        raise MeshError("zero extent: all vertices coincide")
    thinnest = extent.min() / extent.max()
    if thinnest < min_thickness:
        axis = "xyz"[int(extent.argmin())]
        raise MeshError(
            f"flat mesh: zero thickness along {axis} (extent ratio {thinnest:.2e} < {min_thickness:g}),"
            " so it has no inside"
        )


@dataclass(frozen=True)
class Normalization:
    """``normalised = (source - center) * scale``; ``source = normalised / scale + center``."""

    center: tuple[float, float, float]
    scale: float

    def to_dict(self) -> dict:
        return {"center": list(self.center), "scale": self.scale}


def normalize(mesh: Mesh, margin: float) -> tuple[Mesh, Normalization]:
    """Centre the bounding box at the origin and scale its largest side to 2 * (1 - margin).

    Unreferenced vertices are dropped first, so stray points cannot shrink the shape.
    """
    used, inverse = np.unique(mesh.faces, return_inverse=True)
    vertices = mesh.vertices[used]
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    center = (low + high) / 2
    scale = 2 * (1 - margin) / float((high - low).max())
    out = Mesh(
        (vertices - center) * scale,
        inverse.reshape(-1, 3).astype(np.int64),
        None if mesh.vertex_colors is None else mesh.vertex_colors[used],
        mesh.face_colors,
    )
    return out, Normalization(tuple(float(c) for c in center), scale)
