"""Robust inside/outside: generalised winding numbers (Jacobson et al. 2013, via libigl).

The winding number of a closed, outward-oriented surface is 1 inside and 0 outside. It
degrades gracefully on real assets: holes, several overlapping parts and self-intersections
still give values near 1 inside and near 0 outside, so thresholding at 0.5 is the standard
robust inside test. libigl's ``fast_winding_number`` (Barill et al. 2018) makes it
O(log F) per query; for small meshes its tree costs more than it saves, and libigl's exact
sum over all triangles is both faster and exact.
"""

from __future__ import annotations

import igl
import numpy as np

# Below this many faces the exact O(F) sum beats the O(log F) tree (measured on random_urdfs
# meshes of 300-800 faces: 2-6x faster at 50k queries).
EXACT_MAX_FACES = 1000


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """vertices (V, 3), faces (F, 3), points (P, 3) -> generalised winding numbers (P,) float64."""
    vertices = np.ascontiguousarray(vertices, np.float64)
    faces = np.ascontiguousarray(faces, np.int64)
    points = np.ascontiguousarray(points, np.float64)
    if len(faces) <= EXACT_MAX_FACES:
        return np.asarray(igl.winding_number(vertices, faces, points), np.float64)
    return igl.fast_winding_number(vertices, faces, points)


def inside(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points (P, 3) -> (P,) bool, True where the winding number exceeds 1/2.

    Orientation-agnostic: a mesh whose faces all point inwards has winding numbers near -1
    inside, so the absolute value is thresholded.
    """
    return np.abs(winding_numbers(vertices, faces, points)) > 0.5
