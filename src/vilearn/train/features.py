"""Cached condition features: a frozen image encoder run once over every prepared view.

``vilearn cache-features`` writes them; training reads them when ``conditioner.cached`` is set
(``LatentViewDataset(features=name)``), so a frozen DINOv2 never runs in the training loop.
Layout, next to the latents (``vilearn.vae.encode``)::

    DATASET/features/<name>/info.json          model, image_size, tokens (L_c), width (D), dtype
    DATASET/features/<name>/<id>.safetensors   view_000, view_001, ...: (L_c, D) per usable view;
                                               metadata: model, image_size, views (manifest count)

``<name>`` is the model's folder name (a local folder) or hub id, made filesystem-safe, then the
image size: ``facebook/dinov2-giant`` at 518 -> ``facebook--dinov2-giant-518``. The image of view k
goes through ``prepare_condition_image`` with the view's mask at the conditioner's image size,
exactly as ``LatentViewDataset`` prepares it for on-the-fly encoding. A view whose mask is empty
cannot be prepared and has no key. Files are written atomically: present means complete.

Stored in float16 by default: half of float32's size, and 3 more mantissa bits than bfloat16
(relative rounding 2^-11 vs 2^-8). DINOv2's last hidden states are layer-normed, far inside
float16's range (65504); a shape whose features would still overflow fails with that reason.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vilearn.data.dataset import PreparedDataset
from vilearn.data.shards import Shard
from vilearn.dit.conditioner import ImageConditioner
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.io import CorruptFileError, clean_stale_tmp, read_json, save_safetensors, write_json

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class FeatureSummary:
    cached: int = 0  # shape files written now
    skipped: int = 0  # already complete
    failed: dict[str, str] = field(default_factory=dict)  # shape id -> reason


def model_identity(model: str) -> str:
    """A local folder's resolved path, else the hub id as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def feature_name(model: str, image_size: int) -> str:
    """Folder name of a model's features: ``facebook/dinov2-giant``, 518 -> ``facebook--dinov2-giant-518``."""
    path = Path(model).expanduser()
    base = path.resolve().name if path.is_dir() else model.replace("/", "--")
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', base).strip('-.') or 'model'}-{image_size}"


def encoder_identity(conditioner: ImageConditioner) -> str:
    """What made the tokens: a DINOv2's folder or hub id; an EfficientNet-Lite's kind and maps
    (``efficientnet-lite0:stage5``)."""
    config = conditioner.config
    if config.kind == "dinov2":
        return model_identity(config.model)
    return f"{config.kind}:{'+'.join(config.features)}"


def conditioner_feature_name(conditioner: ImageConditioner) -> str:
    """``feature_name``, plus ``-uncropped`` when the conditioner keeps the camera's framing;
    EfficientNet-Lite: ``efficientnet-lite0-stage5-224``."""
    config = conditioner.config
    model = config.model if config.kind == "dinov2" else f"{config.kind}-{'-'.join(config.features)}"
    name = feature_name(model, conditioner.image_size)
    return name if conditioner.crop else f"{name}-uncropped"


def features_dir(root: str | Path, name: str) -> Path:
    return Path(root) / "features" / name


def features_path(root: str | Path, name: str, shape_id: str) -> Path:
    return features_dir(root, name) / f"{shape_id}.safetensors"


def view_key(view: int) -> str:
    return f"view_{view:03d}"


def stored_views(path: Path) -> list[int]:
    """The view indices a features file holds (reads only its header); an unreadable file is a
    ``CorruptFileError`` naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return sorted(int(key.removeprefix("view_")) for key in handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptFileError(f"{path}: unreadable features file ({error})") from error


def read_view_features(path: Path, view: int) -> Tensor:
    """One view's stored tokens (L_c, D), in the stored dtype; a missing view or an unreadable
    file (``CorruptFileError``) names the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            if view_key(view) not in handle.keys():
                raise KeyError(f"{path}: no features for view {view}")
            return handle.get_tensor(view_key(view))
    except (SafetensorError, OSError) as error:
        raise CorruptFileError(f"{path}: unreadable features file ({error})") from error


def is_complete(path: Path, num_views: int) -> bool:
    """True when ``path`` is a readable features file made for ``num_views`` views."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError):
        return False
    return metadata.get("views") == str(num_views)


def info(conditioner: ImageConditioner, dtype: str) -> dict:
    """What a features folder was made with (``info.json``)."""
    return {"model": encoder_identity(conditioner), "image_size": conditioner.image_size,
            "tokens": conditioner.n_tokens, "width": conditioner.out_dim, "dtype": dtype,
            "crop": conditioner.crop}


def check_features(root: str | Path, conditioner: ImageConditioner) -> str:
    """The features folder name for ``conditioner``; raises when it is absent or made otherwise."""
    name = conditioner_feature_name(conditioner)
    path = features_dir(root, name) / "info.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent}: no cached features for {encoder_identity(conditioner)!r} at "
            f"{conditioner.image_size} px (run 'vilearn cache-features {root} --conditioner "
            f"TRAIN_CONFIG' with this run's conditioner section first)")
    stored, expected = read_json(path), info(conditioner, "")
    stored.setdefault("crop", True)  # folders written before the crop switch were cropped
    for key in ("model", "image_size", "tokens", "width", "crop"):
        if stored.get(key) != expected[key]:
            raise ValueError(f"{path}: features made with {key} {stored.get(key)!r}, but the "
                             f"conditioner has {expected[key]!r}")
    return name


def prepared_views(data: PreparedDataset, shape_id: str, num_views: int,
                   image_size: int, crop: bool = True) -> tuple[list[int], Tensor]:
    """The usable views (mask not empty) and their prepared images (V, 3, S, S) in [0, 1]."""
    views, images = [], []
    for k in range(num_views):
        mask = data.view(shape_id, k, ("mask",))["mask"]
        if not mask.any():
            continue
        views.append(k)
        images.append(prepare_condition_image(data.image(shape_id, k), size=image_size, mask=mask,
                                              crop=crop))
    if not views:
        raise ValueError(f"shape {shape_id!r}: no view shows the object (every mask is empty)")
    return views, torch.stack(images)


@torch.no_grad()
def encode_shape(conditioner: ImageConditioner, data: PreparedDataset, shape_id: str, num_views: int,
                 batch: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """{view_key(k): tokens (L_c, D) in ``dtype``, on the CPU} for the usable views of a shape."""
    views, images = prepared_views(data, shape_id, num_views, conditioner.image_size, conditioner.crop)
    device = conditioner.null_tokens.device
    tokens = torch.cat([conditioner.encoder(chunk.to(device)).float().cpu()
                        for chunk in images.split(batch)])  # (V, L_c, D)
    stored = tokens.to(dtype)
    if not torch.isfinite(stored).all() and torch.isfinite(tokens).all():
        raise ValueError(f"shape {shape_id!r}: features exceed the range of {dtype} "
                         f"(max |x| {float(tokens.abs().max()):.4g}); use bfloat16")
    return {view_key(k): t for k, t in zip(views, stored)}


def cache_features(root: str | Path, conditioner: ImageConditioner, batch: int = 16,
                   dtype: str = "float16", split: str | None = None, shard: Shard | None = None,
                   on_shape: Callable[[str, str], None] | None = None) -> tuple[str, FeatureSummary]:
    """Write ``features/<name>/<id>.safetensors`` for every ok shape (of ``shard``); returns
    (name, summary).

    ``batch``: views per encoder call. Complete files are skipped; a shape that fails (a broken
    view file, no usable view) is recorded with its reason and the others go on.
    ``on_shape(id, outcome)`` is called per shape with "cached", "skipped" or "failed".
    """
    if not conditioner.frozen:
        raise ValueError(f"conditioner kind {conditioner.config.kind!r} trains jointly: only a "
                         "frozen encoder (dinov2, efficientnet-lite*) has features to cache")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    data, name = PreparedDataset(root), conditioner_feature_name(conditioner)
    folder, made = features_dir(root, name), info(conditioner, dtype)
    if (folder / "info.json").is_file():
        stored = read_json(folder / "info.json")
        for key in ("model", "image_size", "tokens", "width", "dtype"):
            if stored.get(key) != made[key]:
                raise ValueError(f"{folder}: its features were made with {key} {stored.get(key)!r}, "
                                 f"this run would use {made[key]!r}; move the folder away or match it")
    else:
        write_json(folder / "info.json", made)
    clean_stale_tmp(folder)
    conditioner.eval()

    def make(shape_id: str, num_views: int) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = encode_shape(conditioner, data, shape_id, num_views, batch, DTYPES[dtype])
        return tensors, {"model": made["model"], "image_size": str(made["image_size"]),
                         "views": str(num_views), "dtype": dtype}

    summary = cache_per_shape(data, split, shard, lambda shape_id: features_path(root, name, shape_id),
                              make, on_shape)
    return name, summary


def cache_per_shape(data: PreparedDataset, split: str | None, shard: Shard | None,
                    path_of: Callable[[str], Path],
                    make: Callable[[str, int], tuple[dict[str, Tensor], dict[str, str]]],
                    on_shape: Callable[[str, str], None] | None) -> FeatureSummary:
    """The loop of the per-shape view caches (features here, images in ``vilearn.train.images``):
    for every ok shape of ``split`` (and ``shard``), a complete file at ``path_of(id)`` is kept,
    else ``make(id, views)`` gives its tensors and metadata, saved atomically; a shape that
    fails is recorded with its reason and the others go on."""
    summary = FeatureSummary()
    for row in data.rows(split):
        shape_id, num_views = row["id"], int(row.get("views", 0))
        if shard is not None and not shard.owns(shape_id):
            continue
        path = path_of(shape_id)
        if is_complete(path, num_views):
            summary.skipped += 1
            outcome = "skipped"
        else:
            try:
                save_safetensors(path, *make(shape_id, num_views))
                summary.cached += 1
                outcome = "cached"
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
                summary.failed[shape_id] = str(error)
                outcome = "failed"
        if on_shape:
            on_shape(shape_id, outcome)
    return summary
