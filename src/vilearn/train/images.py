"""Condition images prepared once, at the conditioner's size: ``vilearn cache-images``.

Preparing a view on the fly (``vilearn.train.data.condition_image``) opens its compressed maps
for the mask, decodes the PNG, composites, crops, pads and resizes: most of a training item's
time. This cache does it once per view and stores the result, so the loader reads one small
tensor per item instead. Layout, beside ``features/`` (``vilearn.train.features``)::

    DATASET/images/<S>[-uncropped]/info.json          image_size, crop, border_ratio
    DATASET/images/<S>[-uncropped]/<id>.safetensors   view_000, view_001, ...: (3, S, S) uint8 per
                                                      usable view; metadata: views (manifest count)

Exactness: ``prepare_condition_image`` resizes in 8 bits and returns k / 255 in float32, so the
stored uint8 k is its output times 255 exactly, and ``read_view_image`` (k / 255 in float32)
returns the very tensor the on-the-fly path makes: training is the same with or without the
cache. ``LatentViewDataset`` uses the cache by itself where a shape's file exists (the others
are prepared on the fly). A view whose mask is empty cannot be prepared and has no key; files
are written atomically (present means complete).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from vilearn.data.dataset import PreparedDataset
from vilearn.data.shards import Shard
from vilearn.io import CorruptFileError, clean_stale_tmp, read_json, write_json
from vilearn.train.features import FeatureSummary, cache_per_shape, prepared_views, view_key

BORDER_RATIO = 0.15  # prepare_condition_image's default, the one training uses


def images_dir(root: str | Path, image_size: int, crop: bool = True) -> Path:
    return Path(root) / "images" / (f"{image_size}" if crop else f"{image_size}-uncropped")


def images_path(folder: Path, shape_id: str) -> Path:
    return folder / f"{shape_id}.safetensors"


def info(image_size: int, crop: bool) -> dict:
    return {"image_size": image_size, "crop": crop, "border_ratio": BORDER_RATIO}


def cached_images(root: str | Path, image_size: int, crop: bool = True) -> Path | None:
    """The cache folder for (``image_size``, ``crop``) when the dataset has one, else None."""
    folder = images_dir(root, image_size, crop)
    path = folder / "info.json"
    return folder if path.is_file() and read_json(path) == info(image_size, crop) else None


def read_view_image(path: Path, view: int) -> Tensor:
    """One view's stored image as the conditioner takes it: (3, S, S) float32 in [0, 1]; a
    missing view or an unreadable file (``CorruptFileError``) names the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            if view_key(view) not in handle.keys():
                raise CorruptFileError(f"{path}: no image for view {view}")
            return handle.get_tensor(view_key(view)).float() / 255.0
    except (SafetensorError, OSError) as error:
        raise CorruptFileError(f"{path}: unreadable condition-image file ({error})") from error


def shape_images(data: PreparedDataset, shape_id: str, num_views: int, image_size: int,
                 crop: bool) -> dict[str, Tensor]:
    """{view_key(k): (3, S, S) uint8} for the usable views of a shape."""
    views, images = prepared_views(data, shape_id, num_views, image_size, crop)
    stored = (images * 255.0).round().to(torch.uint8)  # exact: the images are k / 255
    return {view_key(k): image for k, image in zip(views, stored)}


def cache_images(root: str | Path, image_size: int, crop: bool = True, split: str | None = None,
                 shard: Shard | None = None,
                 on_shape: Callable[[str, str], None] | None = None) -> tuple[Path, FeatureSummary]:
    """Write ``images/<S>[-uncropped]/<id>.safetensors`` for every ok shape (of ``shard``).

    Complete files are skipped; a shape that fails (a broken view file, no usable view) is
    recorded with its reason and the others go on. ``on_shape(id, outcome)`` is called per shape
    with "cached", "skipped" or "failed". Returns (folder, summary).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    data, folder = PreparedDataset(root), images_dir(root, image_size, crop)
    made = info(image_size, crop)
    if (folder / "info.json").is_file() and read_json(folder / "info.json") != made:
        raise ValueError(f"{folder}: its images were made with {read_json(folder / 'info.json')}, "
                         f"this run would use {made}; move the folder away")
    write_json(folder / "info.json", made)
    clean_stale_tmp(folder)

    def make(shape_id: str, num_views: int) -> tuple[dict[str, Tensor], dict[str, str]]:
        return shape_images(data, shape_id, num_views, image_size, crop), {"views": str(num_views)}

    summary = cache_per_shape(data, split, shard, lambda shape_id: images_path(folder, shape_id), make,
                              on_shape)
    return folder, summary
