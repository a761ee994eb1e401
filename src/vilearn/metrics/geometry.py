"""Point-set metrics against a ground-truth shape: Chamfer-L1/L2, F-score, normal consistency,
and volume IoU from occupancy labels.

Conventions (Occupancy Networks, Mescheder et al. 2019; the Hunyuan3D evaluations follow them).
All distances are Euclidean, in the normalised object frame ([-1, 1]^3, so a threshold of 0.01 is
0.5% of the frame's side). ``G`` are points sampled on the generated surface, ``R`` on the
reference, and ``d(x, S) = min_{s in S} ||x - s||_2`` (nearest neighbour, scipy cKDTree):

* accuracy     = mean_{g in G} d(g, R)           (how far the generation strays from the truth)
* completeness = mean_{r in R} d(r, G)           (how much of the truth the generation misses)
* Chamfer-L1   = (accuracy + completeness) / 2   (mean of distances, no squares)
* Chamfer-L2   = (mean_G d(g, R)^2 + mean_R d(r, G)^2) / 2   (mean of squared distances, no root)
* precision(t) = fraction of G with d(g, R) < t;  recall(t) = fraction of R with d(r, G) < t;
  F-score(t)   = 2 P R / (P + R), and 0 when P + R = 0.
* normal consistency = (mean_G |n_g . n_R(g)| + mean_R |n_r . n_G(r)|) / 2, where n_S(x) is the
  normal of x's nearest neighbour in S. The absolute cosine makes it orientation-agnostic
  (extracted meshes are often inside-out); 1 is perfect, 0 means perpendicular normals.

Point-to-point distances carry a sampling floor: two independent samplings of the same surface
with spacing ``h`` sit about ``h / 2`` apart, so F-score at a threshold near ``h`` is below 1 for
a perfect shape. Sample densely enough that the spacing is well under the smallest threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


def check_points(name: str, points: np.ndarray) -> np.ndarray:
    """``points`` as a (N, 3) float64 array with N >= 1 and finite values, else a ValueError naming it."""
    array = np.asarray(points, np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name}: expected an (N, 3) array, got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{name}: no points")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: {int((~np.isfinite(array)).any(axis=1).sum())} points are NaN or infinite")
    return array


def nearest(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbours of source (N, 3) in target (M, 3): distances (N,) float64, indices (N,) int64."""
    distances, indices = cKDTree(target).query(source, k=1)
    return np.asarray(distances, np.float64), np.asarray(indices, np.int64)


@dataclass(frozen=True)
class Matching:
    """Nearest neighbours both ways between generated points G and reference points R.

    ``gen_distance`` (N,) = d(g, R) and ``gen_index`` (N,) its index into R;
    ``ref_distance`` (M,) = d(r, G) and ``ref_index`` (M,) its index into G. One matching feeds
    every metric below, so the KD-trees are built once per sample.
    """

    gen_distance: np.ndarray
    gen_index: np.ndarray
    ref_distance: np.ndarray
    ref_index: np.ndarray

    @classmethod
    def of(cls, generated: np.ndarray, reference: np.ndarray) -> Matching:
        """generated (N, 3), reference (M, 3) -> their Matching."""
        generated = check_points("generated points", generated)
        reference = check_points("reference points", reference)
        return cls(*nearest(generated, reference), *nearest(reference, generated))

    def restrict(self, gen_keep: np.ndarray, ref_keep: np.ndarray) -> Matching:
        """The sub-matching of G[gen_keep] (N,) bool and R[ref_keep] (M,) bool.

        Distances still refer to the full other set: d(g, R) for kept g, d(r, G) for kept r, and
        the indices still index the full R and G. Chamfer and F-score apply to it; normal
        consistency needs the unrestricted matching.
        """
        return Matching(
            self.gen_distance[gen_keep], self.gen_index[gen_keep],
            self.ref_distance[ref_keep], self.ref_index[ref_keep],
        )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def chamfer_l1(matching: Matching) -> float:
    """(mean_G d(g, R) + mean_R d(r, G)) / 2; NaN when either side is empty."""
    return 0.5 * (_mean(matching.gen_distance) + _mean(matching.ref_distance))


def chamfer_l2(matching: Matching) -> float:
    """(mean_G d(g, R)^2 + mean_R d(r, G)^2) / 2; NaN when either side is empty."""
    return 0.5 * (_mean(matching.gen_distance**2) + _mean(matching.ref_distance**2))


def precision_recall(matching: Matching, threshold: float) -> tuple[float, float]:
    """(fraction of G within ``threshold`` of R, fraction of R within ``threshold`` of G).

    An empty side scores 0: no generated point is correct, or no reference point is covered.
    """
    if threshold <= 0:
        raise ValueError(f"F-score threshold must be positive, got {threshold}")
    precision = float((matching.gen_distance < threshold).mean()) if len(matching.gen_distance) else 0.0
    recall = float((matching.ref_distance < threshold).mean()) if len(matching.ref_distance) else 0.0
    return precision, recall


def fscore(matching: Matching, threshold: float) -> float:
    """Harmonic mean of precision and recall at ``threshold``; 0 when both are 0."""
    precision, recall = precision_recall(matching, threshold)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def normal_consistency(matching: Matching, gen_normals: np.ndarray, ref_normals: np.ndarray) -> float:
    """Mean absolute cosine between each point's normal and its nearest neighbour's, both ways.

    gen_normals (N, 3) and ref_normals (M, 3): unit normals of the very points the (unrestricted)
    matching was built from. Returns a value in [0, 1].
    """
    gen_normals = np.asarray(gen_normals, np.float64)
    ref_normals = np.asarray(ref_normals, np.float64)
    if gen_normals.shape != (len(matching.gen_index), 3) or ref_normals.shape != (len(matching.ref_index), 3):
        raise ValueError(
            f"normals must match the matched points: gen_normals {gen_normals.shape} for "
            f"{len(matching.gen_index)} points, ref_normals {ref_normals.shape} for {len(matching.ref_index)}"
        )
    gen_cos = np.abs((gen_normals * ref_normals[matching.gen_index]).sum(axis=1))
    ref_cos = np.abs((ref_normals * gen_normals[matching.ref_index]).sum(axis=1))
    return 0.5 * (float(gen_cos.mean()) + float(ref_cos.mean()))


def volume_iou(inside_a: np.ndarray, inside_b: np.ndarray) -> float:
    """|A and B| / |A or B| over shared query points: inside_a (Q,) bool, inside_b (Q,) bool.

    With query points uniform in a box, this is the Monte Carlo estimate of the volume IoU of
    the two solids within that box. NaN when neither solid contains any query point.
    """
    inside_a, inside_b = np.asarray(inside_a, bool), np.asarray(inside_b, bool)
    if inside_a.shape != inside_b.shape or inside_a.ndim != 1:
        raise ValueError(
            f"occupancy labels must be two (Q,) arrays, got {inside_a.shape} and {inside_b.shape}"
        )
    union = int((inside_a | inside_b).sum())
    return int((inside_a & inside_b).sum()) / union if union else float("nan")
