"""``show-groups``: the paper's Figure 2 for one view of our data, as one PNG.

Two rows of four tiles. Top, seen from the condition camera: the condition image, the
tokens' anchors coloured by group, the VST-only geometry, the IST-only geometry. Bottom, seen
from the opposite side: the full decoded shape, the anchors, the VST-only and IST-only
geometry. VST is green, IST red.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from vilearn.data.camera import Camera
from vilearn.data.preview import opposite_camera
from vilearn.grouping.geometry import render_mesh, subset_mesh
from vilearn.grouping.plot import side_by_side

VST_RGB, IST_RGB, FULL_RGB = (60, 170, 80), (210, 70, 60), (178, 178, 178)


def anchors_tile(anchors: np.ndarray, visible: np.ndarray, camera: Camera,
                 background: np.ndarray | None = None) -> Image.Image:
    """Anchors (N, 3) projected through ``camera``, far ones drawn first, on a faded
    ``background`` (H, W, 3) or white."""
    if background is None:
        base = Image.new("RGB", (camera.width, camera.height), "white")
    else:
        white = Image.new("RGB", background.shape[1::-1], "white")
        base = Image.blend(Image.fromarray(background), white, 0.7)
    draw = ImageDraw.Draw(base)
    uv, z = camera.project(anchors)
    radius = max(1.0, camera.width / 160)
    for i in np.argsort(-z):
        if z[i] <= 0:
            continue
        u, v = uv[i]
        draw.ellipse([u - radius, v - radius, u + radius, v + radius],
                     fill=VST_RGB if visible[i] else IST_RGB)
    return base


def _mesh_tile(vae, tokens, mask, camera: Camera, rgb, resolution: int) -> Image.Image:
    try:
        image = render_mesh(subset_mesh(vae, tokens, mask, resolution), camera, rgb)[0]
        return Image.fromarray(image)
    except ValueError as error:  # empty subset, or no surface in the box
        tile = Image.new("RGB", (camera.width, camera.height), "white")
        ImageDraw.Draw(tile).text((6, camera.height // 2), str(error)[:40], fill=(120, 0, 0))
        return tile


def _label(image: Image.Image, text: str, size: int) -> Image.Image:
    tile = image.convert("RGB").resize((size, size))
    ImageDraw.Draw(tile).text((5, 4), text, fill=(0, 0, 0))
    return tile


@torch.no_grad()
def groups_figure(vae, latents: dict[str, torch.Tensor], visible: np.ndarray, camera: Camera,
                  image: np.ndarray, title: str = "", resolution: int = 96, tile: int = 256) -> Image.Image:
    """The figure for one view.

    Args:
        latents: a latents file's tensors (``mean`` (N, C), ``anchors`` (N, 3)).
        visible: (N,) bool, the view's VST.
        camera: the condition camera; image: its condition image (H, W, 3) uint8.
    """
    param = next(vae.parameters())
    tokens = vae.decode(latents["mean"][None].to(param.device, param.dtype))
    anchors = latents["anchors"].float().numpy()
    mask = torch.from_numpy(np.asarray(visible, bool))
    back = opposite_camera(camera)
    n, v = len(visible), int(np.sum(visible))
    tiles = [
        _label(Image.fromarray(image), f"condition view {title}", tile),
        _label(anchors_tile(anchors, visible, camera, image), f"anchors: VST {v} / IST {n - v}", tile),
        _label(_mesh_tile(vae, tokens, mask, camera, VST_RGB, resolution), "VST only", tile),
        _label(_mesh_tile(vae, tokens, ~mask, camera, IST_RGB, resolution), "IST only", tile),
        _label(_mesh_tile(vae, tokens, None, back, FULL_RGB, resolution), "all tokens, opposite side", tile),
        _label(anchors_tile(anchors, visible, back), "anchors, opposite side", tile),
        _label(_mesh_tile(vae, tokens, mask, back, VST_RGB, resolution), "VST only, opposite side", tile),
        _label(_mesh_tile(vae, tokens, ~mask, back, IST_RGB, resolution), "IST only, opposite side", tile),
    ]
    return side_by_side(tiles, columns=4)
