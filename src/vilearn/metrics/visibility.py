"""Visible vs invisible fidelity: how well the generation matches the part of the ground truth the
condition image shows, and the part it had to imagine (what ViLearn decouples).

Which ground-truth points are seen. A reference surface point is *seen* when it projects into the
condition view's mask and is not hidden behind the first surface along its pixel's ray:

    z <= depth[pixel] + depth_tolerance + pixel_tolerance * z / fx

with z its camera-frame depth and ``depth[pixel]`` the stored first-hit depth of the pixel it
falls in (pixel (row i, column j) covers u in [j, j + 1), v in [i, i + 1)). The depth map is
sampled at pixel centres, so a point on a surface tilted away from the camera can lie behind
its pixel's centre hit by up to ~0.7 px * z / fx * tan(tilt); the second term allows for that
(the default allows tilts of at least ~55 degrees; points seen more obliquely may count as
unseen), the first for sampling noise. Both are in normalised-frame units. This needs only the stored view,
not the ground-truth mesh, so it works on a prepared dataset. Its cost: a surface less than the
tolerance behind an occluder (a thin wall's back) counts as seen.

How generated points are split. Each generated point goes to the side (seen / unseen) of its
nearest reference point: the space is cut along the Voronoi cells of the reference points'
labels. For a subset S of the reference with its generated share G_S:

* completeness and recall use the reference points in S, against *all* generated points;
* accuracy and precision use the generated points in G_S, against *all* reference points;

so the seen and unseen scores partition the full ones (each point is counted on exactly one
side), and a floater lands on the side whose surface it is nearest to. When S is empty (the view
sees none, or all, of the reference) every score of that side is NaN. When only G_S is empty
(nothing was generated near that side), its precision is 0, so its F-score is 0, and its
Chamfer is NaN (the accuracy term has no points).
"""

from __future__ import annotations

import numpy as np

from vilearn.metrics.alignment import ConditionView
from vilearn.metrics.geometry import Matching, chamfer_l1, chamfer_l2, check_points, fscore


def seen_points(
    points: np.ndarray, view: ConditionView, depth_tolerance: float = 0.01, pixel_tolerance: float = 1.0
) -> np.ndarray:
    """points (P, 3) on the reference surface -> (P,) bool, True where the condition view sees them."""
    points = check_points("reference points", points)
    camera = view.camera
    uv, z = camera.project(points)
    column, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    inside = (z > 0) & (column >= 0) & (column < camera.width) & (row >= 0) & (row < camera.height)
    seen = np.zeros(len(points), bool)
    i, j, zi = row[inside], column[inside], z[inside]
    covered = np.asarray(view.mask, bool)[i, j]
    tolerance = depth_tolerance + pixel_tolerance * zi / camera.K[0, 0]
    seen[inside] = covered & (zi <= np.asarray(view.depth, np.float64)[i, j] + tolerance)
    return seen


def split_fidelity(
    matching: Matching, seen: np.ndarray, thresholds: tuple[float, ...] = (0.01, 0.02, 0.05)
) -> dict[str, float]:
    """Chamfer-L1/L2 and F-scores on the seen and the unseen part of the reference.

    matching: generated vs reference points (``Matching.of``); seen (M,) bool over the reference
    points. Returns ``visible/<metric>`` and ``invisible/<metric>`` for ``chamfer_l1``,
    ``chamfer_l2`` and ``fscore@<t>``, plus ``seen_fraction`` (share of reference points seen).
    """
    seen = np.asarray(seen, bool)
    if seen.shape != matching.ref_distance.shape:
        raise ValueError(f"seen: expected ({len(matching.ref_distance)},) bool, got shape {seen.shape}")
    gen_seen = seen[matching.gen_index]  # each generated point joins its nearest reference point's side
    out = {"seen_fraction": float(seen.mean())}
    for side, gen_keep, ref_keep in (("visible", gen_seen, seen), ("invisible", ~gen_seen, ~seen)):
        part = matching.restrict(gen_keep, ref_keep)
        empty = not len(part.ref_distance)
        out[f"{side}/chamfer_l1"] = chamfer_l1(part)
        out[f"{side}/chamfer_l2"] = chamfer_l2(part)
        for threshold in thresholds:  # no reference points on this side: nothing to score
            out[f"{side}/fscore@{threshold:g}"] = float("nan") if empty else fscore(part, threshold)
    return out
