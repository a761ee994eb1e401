"""The locality report: does the VST decode to what the condition camera sees?

For each view, three surfaces are decoded from the shape's latents (object frame): the full
shape, the VST-only and the IST-only geometry (``geometry.subset_mesh``). Each is sampled
uniformly by area and every sample is tested against the condition camera with the full
decoded shape as the occluder (its ray-cast depth map): a sample is *visible* when it projects
into the image and is not behind the first hit by more than ``tolerance``. Reported per view:

- ``vst_visible``, ``ist_visible``: visible fraction of the VST-only / IST-only surface;
- ``full_visible``: the same for the full decoded surface (the chance level);
- ``vst_anchor_visible``, ``ist_anchor_visible``: visible fraction of the tokens' FPS anchors
  (points of the true surface) against the view's stored ground-truth depth map (no decoding).

Grouping works when vst_visible is well above full_visible and ist_visible below it.
The occluder is the *decoded* shape so that the VAE's reconstruction error does not count
against locality. ``tolerance`` defaults to two grid cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vilearn.data.camera import Camera
from vilearn.data.dataset import PreparedDataset
from vilearn.grouping.geometry import render_mesh, sample_mesh, subset_mesh, visible_from
from vilearn.grouping.store import load_groups
from vilearn.vae.encode import latents_dir, read_latents


@dataclass
class ViewLocality:
    id: str
    view: int
    vst_tokens: int
    vst_visible: float  # NaN when the subset decodes to no surface (or is empty)
    ist_visible: float
    full_visible: float
    vst_anchor_visible: float
    ist_anchor_visible: float


def _fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


@torch.no_grad()
def view_locality(vae, latents: dict[str, torch.Tensor], visible: np.ndarray, camera: Camera,
                  gt_depth: np.ndarray, resolution: int = 64, samples: int = 4096,
                  tolerance: float | None = None) -> dict[str, float]:
    """The five fractions of one view.

    Args:
        latents: a latents file's tensors (``mean`` (N, C), ``anchors`` (N, 3)).
        visible: (N,) bool, the view's VST.
        camera, gt_depth: the condition camera and its stored depth map (H, W).
    """
    tolerance = 2 * 2.02 / resolution if tolerance is None else tolerance
    param = next(vae.parameters())
    tokens = vae.decode(latents["mean"][None].to(param.device, param.dtype))
    full = subset_mesh(vae, tokens, None, resolution)
    _, depth = render_mesh(full, camera)
    out = {"full_visible": _fraction(visible_from(camera, depth, sample_mesh(full, samples), tolerance))}
    mask = torch.from_numpy(visible)
    for name, subset in (("vst", mask), ("ist", ~mask)):
        try:
            points = sample_mesh(subset_mesh(vae, tokens, subset, resolution), samples)
            out[f"{name}_visible"] = _fraction(visible_from(camera, depth, points, tolerance))
        except ValueError:  # empty subset or no surface: nothing to measure
            out[f"{name}_visible"] = float("nan")
    anchors = latents["anchors"].float().numpy()
    seen = visible_from(camera, gt_depth, anchors, tolerance)
    out["vst_anchor_visible"] = _fraction(seen[visible])
    out["ist_anchor_visible"] = _fraction(seen[~visible])
    return out


def locality_report(root: str | Path, vae, vae_name: str, num_tokens: int, max_shapes: int | None = None,
                    max_views: int | None = None, resolution: int = 64, samples: int = 4096,
                    on_view: Callable[[ViewLocality], None] | None = None) -> dict:
    """Per-view locality over the grouped shapes (first ``max_shapes``, first ``max_views``
    views each) and its means; views without visible points are skipped, and so are views
    whose full latents decode to no surface (listed in ``undecodable_views``)."""
    data = PreparedDataset(root)
    rows, undecodable = [], []
    for row in data.rows():
        if max_shapes is not None and len({r.id for r in rows}) >= max_shapes:
            break
        shape_id = row["id"]
        groups = load_groups(root, vae_name, num_tokens, shape_id)
        latents = read_latents(latents_dir(root, vae_name, num_tokens) / f"{shape_id}.safetensors")
        for k in range(min(groups.num_views, max_views or groups.num_views)):
            if groups.empty_views[k]:
                continue
            view = data.view(shape_id, k)
            try:
                fractions = view_locality(vae, latents, groups.visible[k], Camera.from_arrays(view),
                                          view["depth"], resolution, samples)
            except ValueError:  # the full latents decode to no surface: no occluder, no measure
                undecodable.append(f"{shape_id}/{k}")
                continue
            record = ViewLocality(shape_id, k, int(groups.visible[k].sum()), **fractions)
            rows.append(record)
            if on_view:
                on_view(record)
    if not rows:
        raise ValueError(f"{root}: no grouped view with visible points to report on")
    keys = [k for k in asdict(rows[0]) if k.endswith("visible")]
    means = {k: float(np.nanmean([getattr(r, k) for r in rows])) for k in keys}
    failed = {k: int(np.isnan([getattr(r, k) for r in rows]).sum()) for k in keys}
    return {"vae": vae_name, "tokens": num_tokens, "views": len(rows),
            "shapes": len({r.id for r in rows}), "resolution": resolution, "means": means,
            "no_surface": failed, "undecodable_views": undecodable,
            "per_view": [asdict(r) for r in rows]}
