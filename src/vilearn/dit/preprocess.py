"""Condition-image preprocessing, identical at training and at inference.

The object is found from its alpha channel (RGBA input or an explicit mask) or, for an RGB image,
as the pixels that are not white; it is composited onto white, cropped to its bounding box and
padded to a centred square with a white border (``border_ratio`` of the side, hy3dgen's 0.15),
then resized. Training reads the prepared views (RGB on white + mask) through the same function.

``crop=False`` keeps the camera's framing instead (composite, pad to a centred square, resize):
for view-aligned latents (``vilearn.data.view_frame``), where the object's size and place in
the image are what tell the model its size and place in the view frame; a crop would erase both.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

MIN_IMAGE_SIDE = 16  # pixels; smaller inputs are refused (nothing to condition on)
WHITE_BORDER_FRACTION = 0.9  # an RGB input's border must be this white to pass as "on white"


def check_condition_image(image: Image.Image, white_threshold: int = 250) -> list[str]:
    """Problems of a user's condition image, before it is prepared.

    Returns:
        warnings (empty when fine): an RGB image without alpha whose border is not white, whose
        background ``prepare_condition_image`` would then take for part of the object.
    Raises:
        ValueError: the image is smaller than ``MIN_IMAGE_SIDE`` on a side.
    """
    if min(image.size) < MIN_IMAGE_SIDE:
        raise ValueError(f"{image.size[0]}x{image.size[1]} pixels: too small (at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} needed)")
    if "A" in image.mode or "transparency" in image.info:
        return []
    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (2W + 2H, 3)
    white = float((border.min(axis=1) >= white_threshold).mean())
    if white >= WHITE_BORDER_FRACTION:
        return []
    return [f"no alpha channel and the background is not white (only {white:.0%} of the border "
            "is): it will be taken for part of the object; give an RGBA cut-out or the object "
            "on white"]


def _as_rgba(image, mask, white_threshold: int) -> np.ndarray:
    """-> (H, W, 4) float32 in [0, 1]; alpha from ``mask``, the image's alpha, or non-white."""
    if isinstance(image, Image.Image):
        has_alpha = "A" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"condition image must be (H, W, 3) or (H, W, 4), got {array.shape}")
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    array = array.astype(np.float32) / scale
    rgb = array[..., :3]
    if mask is not None:
        alpha = np.asarray(mask, dtype=np.float32)
        alpha = alpha / 255.0 if alpha.max() > 1.0 else alpha
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"mask {alpha.shape} does not match the image {rgb.shape[:2]}")
    elif array.shape[-1] == 4:
        alpha = array[..., 3]
    else:
        alpha = (rgb.min(-1) < white_threshold / 255.0).astype(np.float32)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def prepare_condition_image(
    image: Image.Image | np.ndarray,
    size: int = 224,
    border_ratio: float = 0.15,
    mask: np.ndarray | None = None,
    white_threshold: int = 250,
    crop: bool = True,
) -> Tensor:
    """Crop to the object, pad to a square on white, resize (``crop=False``: only pad and resize).

    Args:
        image: PIL image or (H, W, 3|4) array (uint8, or float in [0, 1]); RGBA uses its alpha.
        size: output side in pixels.
        border_ratio: white margin as a fraction of the output side.
        mask: optional (H, W) object mask (bool, [0, 1] or uint8) overriding any alpha.
        white_threshold: RGB without alpha: a pixel is background when every channel >= this.
        crop: crop to the object's bounding box with a ``border_ratio`` margin (the default), or
            keep the whole image (``border_ratio`` is then unused).
    Returns:
        (3, size, size) float32 in [0, 1], object on white.
    """
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio must be in [0, 1), got {border_ratio!r}")
    rgba = _as_rgba(image, mask, white_threshold)
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + (1.0 - alpha)  # composite onto white
    rows, cols = np.nonzero(alpha[..., 0] > 0.5)
    if rows.size == 0:
        raise ValueError("condition image has no object: empty alpha/mask or an all-white image")
    if crop:
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        rgb = rgb[top:bottom, left:right]
        side = int(np.ceil(max(rgb.shape[:2]) / (1.0 - border_ratio)))
    else:
        side = max(rgb.shape[:2])
    canvas = np.ones((side, side, 3), dtype=np.float32)
    y, x = (side - rgb.shape[0]) // 2, (side - rgb.shape[1]) // 2
    canvas[y : y + rgb.shape[0], x : x + rgb.shape[1]] = rgb
    pil = Image.fromarray((canvas * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(resized / 255.0).permute(2, 0, 1).contiguous()
