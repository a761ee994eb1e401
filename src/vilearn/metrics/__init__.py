"""Metrics of generated meshes: floaters, Chamfer, F-score, normal consistency, volume IoU,
image-shape alignment and visible / invisible fidelity, with confidence intervals over samples.

Each metric is a small pure function on arrays; ``evaluate_mesh`` computes them all for one
sample and ``aggregate`` summarises many. Conventions live in each module's docstring.
"""

from vilearn.metrics.alignment import (
    ConditionView,
    image_shape_alignment,
    mask_coverage,
    masked_depth_l1,
    render_silhouette,
    silhouette_iou,
)
from vilearn.metrics.evaluate import THRESHOLDS, Reference, evaluate_mesh
from vilearn.metrics.floaters import face_components, floaters
from vilearn.metrics.geometry import (
    Matching,
    chamfer_l1,
    chamfer_l2,
    fscore,
    nearest,
    normal_consistency,
    precision_recall,
    volume_iou,
)
from vilearn.metrics.stats import Summary, aggregate, mean_ci
from vilearn.metrics.visibility import seen_points, split_fidelity

__all__ = [
    "THRESHOLDS",
    "ConditionView",
    "Matching",
    "Reference",
    "Summary",
    "aggregate",
    "chamfer_l1",
    "chamfer_l2",
    "evaluate_mesh",
    "face_components",
    "floaters",
    "fscore",
    "image_shape_alignment",
    "mask_coverage",
    "masked_depth_l1",
    "mean_ci",
    "nearest",
    "normal_consistency",
    "precision_recall",
    "render_silhouette",
    "seen_points",
    "silhouette_iou",
    "split_fidelity",
    "volume_iou",
]
