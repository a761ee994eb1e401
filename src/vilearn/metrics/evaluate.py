"""Every metric of one generated mesh against its ground truth and condition view.

The generated mesh, the reference and the view must share one frame (the normalised object frame,
or the view frame for view-aligned latents); thresholds and distances are in its units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from vilearn.data.inside import inside
from vilearn.data.sampling import sample_surface, uniform_points
from vilearn.metrics.alignment import ConditionView, image_shape_alignment
from vilearn.metrics.floaters import floaters
from vilearn.metrics.geometry import (
    Matching,
    chamfer_l1,
    chamfer_l2,
    check_points,
    fscore,
    normal_consistency,
    volume_iou,
)
from vilearn.metrics.visibility import seen_points, split_fidelity

if TYPE_CHECKING:
    from vilearn.data.dataset import PreparedDataset

THRESHOLDS = (0.01, 0.02, 0.05)


@dataclass(frozen=True)
class Reference:
    """The ground-truth shape as the metrics see it.

    points (S, 3) and unit normals (S, 3) sampled uniformly on its surface; optional occupancy
    queries with inside labels: uniform_points (U, 3) + uniform_labels (U,) bool give ``iou``,
    near_points (M, 3) + near_labels (M,) bool give ``iou_near`` (the prepared dataset's
    ``occupancy.npz``).
    """

    points: np.ndarray
    normals: np.ndarray
    uniform_points: np.ndarray | None = None
    uniform_labels: np.ndarray | None = None
    near_points: np.ndarray | None = None
    near_labels: np.ndarray | None = None

    def __post_init__(self):
        check_points("reference points", self.points)
        if np.shape(self.normals) != np.shape(self.points):
            raise ValueError(
                f"reference normals {np.shape(self.normals)} must match points {np.shape(self.points)}"
            )
        for name in ("uniform", "near"):
            points, labels = getattr(self, f"{name}_points"), getattr(self, f"{name}_labels")
            if (points is None) != (labels is None):
                raise ValueError(f"reference: give both {name}_points and {name}_labels, or neither")
            if points is not None:
                check_points(f"reference {name}_points", points)
                if np.shape(labels) != (len(points),):
                    raise ValueError(
                        f"reference {name}_labels: expected ({len(points)},), got {np.shape(labels)}"
                    )

    @classmethod
    def from_mesh(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        rng: np.random.Generator,
        num_surface: int = 100_000,
        num_uniform: int = 100_000,
    ) -> Reference:
        """Sample a ground-truth mesh (V, 3) / (F, 3): surface points, and uniform queries in
        [-1, 1]^3 labelled by generalised winding numbers (none when ``num_uniform`` is 0)."""
        points, normals = sample_surface(vertices, faces, num_surface, rng)
        if num_uniform == 0:
            return cls(points, normals)
        queries = uniform_points(num_uniform, rng)
        return cls(points, normals, queries, inside(vertices, faces, queries))

    @classmethod
    def from_dataset(cls, data: PreparedDataset, shape_id: str) -> Reference:
        """A prepared shape's surface.npz and occupancy.npz."""
        surface, occupancy = data.surface(shape_id), data.occupancy(shape_id)
        return cls(
            surface["points"], surface["normals"],
            occupancy["uniform_points"], occupancy["uniform_labels"].astype(bool),
            occupancy["near_points"], occupancy["near_labels"].astype(bool),
        )


def evaluate_mesh(
    generated: trimesh.Trimesh,
    reference: Reference,
    view: ConditionView | None = None,
    *,
    num_points: int = 100_000,
    thresholds: tuple[float, ...] = THRESHOLDS,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of one generated mesh, as a flat dict of floats (JSON-ready).

    Args:
        generated: the generated mesh (vertices (V, 3), faces (F, 3)), in the reference's frame.
        reference: the ground-truth shape (``Reference``).
        view: the condition view; without it, the alignment and visible/invisible keys are absent.
        num_points: surface samples drawn on the generated mesh (seeded by ``seed``); keep the
            spacing well below the smallest threshold (see ``vilearn.metrics.geometry``).
        thresholds: F-score thresholds in frame units.

    Returns:
        ``components``, ``floater_area`` (``floaters``); ``chamfer_l1``, ``chamfer_l2``,
        ``fscore@<t>``, ``normal_consistency`` (``geometry``); ``iou`` / ``iou_near`` when the
        reference has those queries; with a view: ``silhouette_iou``, ``depth_l1``,
        ``mask_coverage`` (``alignment``), ``seen_fraction`` and ``visible/...``,
        ``invisible/...`` (``visibility``); and ``empty``.

    An empty generation (no faces, or zero area) is a failed sample, not an error: ``empty`` is 1,
    bounded scores take their worst value (F-scores, IoUs, normal consistency, coverage: 0) and
    the unbounded distances (Chamfer, depth) are NaN, which ``stats.aggregate`` counts as missing.
    """
    vertices = np.asarray(generated.vertices, np.float64)
    faces = np.asarray(generated.faces, np.int64)
    is_empty = len(faces) == 0 or float(trimesh.triangles.area(vertices[faces]).sum()) <= 0
    out = dict(floaters(vertices, faces))
    reference_points = np.asarray(reference.points, np.float64)

    if is_empty:
        out.update({"chamfer_l1": math.nan, "chamfer_l2": math.nan})
        out.update({f"fscore@{t:g}": 0.0 for t in thresholds})
        out["normal_consistency"] = 0.0
    else:
        points, normals = sample_surface(vertices, faces, num_points, np.random.default_rng(seed))
        matching = Matching.of(points, reference_points)
        out["chamfer_l1"], out["chamfer_l2"] = chamfer_l1(matching), chamfer_l2(matching)
        out.update({f"fscore@{t:g}": fscore(matching, t) for t in thresholds})
        out["normal_consistency"] = normal_consistency(matching, normals, reference.normals)

    for key, queries, labels in (
        ("iou", reference.uniform_points, reference.uniform_labels),
        ("iou_near", reference.near_points, reference.near_labels),
    ):
        if queries is not None:
            occupied = np.zeros(len(queries), bool) if is_empty else inside(vertices, faces, queries)
            out[key] = volume_iou(occupied, labels)

    if view is not None:
        out.update(image_shape_alignment(vertices, faces, view))
        seen = seen_points(reference_points, view)
        if is_empty:
            out.update(_empty_split(seen, thresholds))
        else:
            out.update(split_fidelity(matching, seen, thresholds))
    out["empty"] = float(is_empty)
    return out


def _empty_split(seen: np.ndarray, thresholds: tuple[float, ...]) -> dict[str, float]:
    """``split_fidelity``'s keys for a generation with no points: F-scores 0, Chamfer NaN."""
    out = {"seen_fraction": float(seen.mean())}
    for side, count in (("visible", seen.sum()), ("invisible", (~seen).sum())):
        out[f"{side}/chamfer_l1"] = out[f"{side}/chamfer_l2"] = math.nan
        out.update({f"{side}/fscore@{t:g}": 0.0 if count else math.nan for t in thresholds})
    return out
