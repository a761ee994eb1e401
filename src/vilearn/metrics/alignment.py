"""Image-shape alignment: a geometric stand-in for the paper's learned IS-AS score.

The generated mesh is ray-cast from the condition camera (``vilearn.data.render.Raycaster``,
camera convention in ``vilearn.data.camera``) and compared with what that camera saw of the
ground truth: the condition view's mask and depth map. The mesh, the camera and the view must
be in the same frame (the object frame, or the view frame when latents are view-aligned).

* ``silhouette_iou`` = |M_gen and M_view| / |M_gen or M_view| over pixels.
* ``depth_l1``       = mean |z_gen - z_view| over pixels both masks cover (camera-frame z, in
  normalised-frame units); NaN when the masks do not overlap (``mask_coverage`` is then 0).
* ``mask_coverage``  = |M_gen and M_view| / |M_view|: the share of the object's pixels the
  generation covers at all, which says how much of the image ``depth_l1`` is averaged over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vilearn.data.camera import Camera
from vilearn.data.render import Raycaster


@dataclass(frozen=True)
class ConditionView:
    """What the condition camera saw of the ground truth.

    camera: the condition camera; mask (H, W) bool; depth (H, W) float32 camera-frame z of the
    first hit, 0 where the mask is False (the prepared dataset's ``views/<k>.npz`` layout).
    """

    camera: Camera
    mask: np.ndarray
    depth: np.ndarray

    def __post_init__(self):
        size = (self.camera.height, self.camera.width)
        if np.shape(self.mask) != size or np.shape(self.depth) != size:
            raise ValueError(
                f"condition view: mask {np.shape(self.mask)} and depth {np.shape(self.depth)} must be "
                f"(H, W) = {size}, the camera's image size"
            )
        if not np.asarray(self.mask).any():
            raise ValueError("condition view: the mask is empty, so there is nothing to align with")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ConditionView:
        """From a prepared view's arrays (``PreparedDataset.view``): K, c2w, image_size, mask, depth."""
        return cls(Camera.from_arrays(arrays), np.asarray(arrays["mask"], bool), np.asarray(arrays["depth"]))


def render_silhouette(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast vertices (V, 3), faces (F, 3) from ``camera``: mask (H, W) bool, depth (H, W) float32."""
    if len(faces) == 0:
        size = (camera.height, camera.width)
        return np.zeros(size, bool), np.zeros(size, np.float32)
    view = Raycaster(np.asarray(vertices, np.float64), np.asarray(faces, np.int64)).render(camera)
    return view.mask, view.depth


def silhouette_iou(mask: np.ndarray, reference_mask: np.ndarray) -> float:
    """Pixel IoU of two (H, W) bool masks; NaN when both are empty."""
    mask, reference_mask = _masks(mask, reference_mask)
    union = int((mask | reference_mask).sum())
    return int((mask & reference_mask).sum()) / union if union else float("nan")


def mask_coverage(mask: np.ndarray, reference_mask: np.ndarray) -> float:
    """Fraction of ``reference_mask`` (H, W) pixels that ``mask`` (H, W) also covers; NaN if it is empty."""
    mask, reference_mask = _masks(mask, reference_mask)
    total = int(reference_mask.sum())
    return int((mask & reference_mask).sum()) / total if total else float("nan")


def masked_depth_l1(
    depth: np.ndarray, mask: np.ndarray, reference_depth: np.ndarray, reference_mask: np.ndarray
) -> float:
    """Mean |depth - reference_depth| over pixels both masks cover; all (H, W). NaN without overlap."""
    mask, reference_mask = _masks(mask, reference_mask)
    both = mask & reference_mask
    if not both.any():
        return float("nan")
    error = np.asarray(depth, np.float64)[both] - np.asarray(reference_depth, np.float64)[both]
    return float(np.abs(error).mean())


def image_shape_alignment(vertices: np.ndarray, faces: np.ndarray, view: ConditionView) -> dict[str, float]:
    """Render the mesh vertices (V, 3), faces (F, 3) from ``view.camera`` and compare with the view.

    Returns ``silhouette_iou``, ``depth_l1`` and ``mask_coverage`` (module docstring). A mesh
    without faces renders nothing: IoU and coverage 0, depth_l1 NaN.
    """
    mask, depth = render_silhouette(vertices, faces, view.camera)
    return {
        "silhouette_iou": silhouette_iou(mask, view.mask),
        "depth_l1": masked_depth_l1(depth, mask, view.depth, view.mask),
        "mask_coverage": mask_coverage(mask, view.mask),
    }


def _masks(mask: np.ndarray, reference_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask, reference_mask = np.asarray(mask, bool), np.asarray(reference_mask, bool)
    if mask.shape != reference_mask.shape or mask.ndim != 2:
        raise ValueError(
            f"masks must be two (H, W) arrays of one size, got {mask.shape} and {reference_mask.shape}"
        )
    return mask, reference_mask
