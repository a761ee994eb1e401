"""Floaters: how fragmented a generated mesh is (the paper's Floater metric, lower is better).

Components are defined on faces: two faces are connected when they share a vertex, after
vertices at the same position are merged (trimesh ``merge_vertices``: positions equal to
``trimesh.tol.merge``, about 1e-8). So a mesh written with per-face vertex copies (STL-like) still
counts as one piece, and two parts touching at a single vertex count as one. Unreferenced
vertices are ignored. A clean single surface has 1 component; every extra one is a floater.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def face_components(vertices: np.ndarray, faces: np.ndarray) -> tuple[int, np.ndarray]:
    """vertices (V, 3), faces (F, 3) -> (number of components, component label (F,) int64 in [0, C)).

    Labels are numbered in order of each component's first face.
    """
    faces = np.asarray(faces, np.int64)
    if len(faces) == 0:
        return 0, np.zeros(0, np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected an (F, 3) array, got shape {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"faces: indices out of range [0, {len(vertices)})")
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), faces, process=False, validate=False)
    mesh.merge_vertices()  # merges coincident positions only; no faces are removed
    merged = np.asarray(mesh.faces, np.int64)
    count = len(mesh.vertices)
    # A triangle's vertices are linked by two edges; the vertex graph's components are the
    # faces' components (each face belongs to the component of its first vertex).
    rows = np.concatenate([merged[:, 0], merged[:, 1]])
    cols = np.concatenate([merged[:, 1], merged[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(count, count))
    _, vertex_label = connected_components(graph, directed=False)
    _, first, label = np.unique(vertex_label[merged[:, 0]], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance
    return len(first), order[label.reshape(-1)].astype(np.int64)


def floaters(vertices: np.ndarray, faces: np.ndarray) -> dict[str, float]:
    """The Floater metric of one mesh: vertices (V, 3), faces (F, 3).

    Returns:
        ``components``: the number of connected components (0 for a mesh without faces);
        ``floater_area``: the fraction of surface area outside the component of largest area,
        in [0, 1) (0 for a single component, and 0 when the mesh has no area at all).
    """
    count, label = face_components(vertices, faces)
    if count == 0:
        return {"components": 0.0, "floater_area": 0.0}
    areas = trimesh.triangles.area(np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)])
    per_component = np.bincount(label, weights=areas, minlength=count)
    total = float(per_component.sum())
    outside = 1.0 - float(per_component.max()) / total if total > 0 else 0.0
    return {"components": float(count), "floater_area": outside}
