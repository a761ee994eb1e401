"""``vilearn cache-features`` and ``vilearn cache-images``: thin wrappers over
``vilearn.train.features`` and ``vilearn.train.images``."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail, parse_shard, shard_option


def conditioner_config(conditioner: str | None, model: str | None, image_size: int | None):
    """--conditioner (a config file or packaged name: its ``conditioner`` section or the whole
    file; or inline YAML keys) or --model; --image-size overrides either -> ConditionerConfig."""
    import yaml

    from vilearn.config import ConfigError, from_dict, read_yaml, resolve_config_path
    from vilearn.dit.conditioner import ConditionerConfig

    if (conditioner is None) == (model is None):
        raise fail("give either --conditioner CONFIG_OR_YAML_KEYS or --model DINOV2_PATH_OR_ID")
    if model is not None:
        data = {"kind": "dinov2", "model": model}
    else:
        try:
            data = read_yaml(resolve_config_path(conditioner))
        except ConfigError as error:
            if "no such file" not in str(error):
                raise fail(str(error)) from error
            try:
                data = yaml.safe_load(conditioner)
            except yaml.YAMLError:
                data = None
            if not isinstance(data, dict):
                raise fail(f"--conditioner {conditioner!r}: neither a config file nor YAML keys "
                           "like '{kind: dinov2, model: PATH, image_size: 518}'") from None
        data = data.get("conditioner", data)
        if not isinstance(data, dict):
            raise fail(f"--conditioner {conditioner!r}: its conditioner section is not a mapping")
    if image_size is not None:
        data = {**data, "image_size": image_size}
    try:
        return from_dict(ConditionerConfig, data, "conditioner")
    except ConfigError as error:
        raise fail(str(error)) from error


def report(summary, folder: Path) -> None:
    """A cache run's outcome: its failures (the first ten), counts; exit status 1 if any failed."""
    for shape_id, reason in list(summary.failed.items())[:10]:
        console.print(f"  failed: {shape_id}: {reason}")
    console.print(f"{summary.cached} cached, {summary.skipped} already done, "
                  f"{len(summary.failed)} failed -> {folder}")
    if summary.failed:
        raise typer.Exit(1)


@app.command("cache-features")
def cache_features_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset folder."),
    conditioner: str = typer.Option(
        None, "--conditioner",
        help="A training config (file or packaged name, e.g. paper-1.1b) whose conditioner section "
             "to use, or inline YAML keys: '{kind: dinov2, model: PATH, image_size: 518}'."),
    model: str = typer.Option(None, "--model", help="DINOv2 folder or hub id (instead of --conditioner)."),
    image_size: int = typer.Option(None, "--image-size", min=1,
                                   help="Side the encoder sees (default: the config's, else the "
                                        "processor's)."),
    batch: int = typer.Option(16, "--batch", min=1, help="Views per encoder call."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored dtype: float16 or bfloat16."),
    device: str = typer.Option("cpu", "--device"),
    shard: str = shard_option(),
) -> None:
    """Run the frozen image encoder once over every usable view and store its tokens in
    DATASET/features/<name>/<id>.safetensors for training with conditioner.cached; resumable."""

    from vilearn.cli.progress import ShapeTicker, progress_bar
    from vilearn.data.dataset import PreparedDataset
    from vilearn.dit.conditioner import FROZEN_KINDS, build_conditioner
    from vilearn.train.features import cache_features, encoder_identity, features_dir

    config = conditioner_config(conditioner, model, image_size)
    if config.kind not in FROZEN_KINDS:
        raise fail(f"conditioner kind {config.kind!r} trains jointly: only a frozen encoder "
                   f"({', '.join(FROZEN_KINDS)}) has features to cache")
    part = parse_shard(shard)
    try:
        shapes = sum(1 for row in PreparedDataset(dataset).rows() if part is None or part.owns(row["id"]))
        frozen = build_conditioner(config).to(device)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise fail(str(error)) from error
    with progress_bar() as bar:
        label = f"cache-features ({encoder_identity(frozen)})"
        tick = ShapeTicker(bar, bar.add_task(label, total=shapes, failed=0, rate=""), fresh="cached")
        try:
            name, summary = cache_features(dataset, frozen, batch=batch, dtype=dtype, shard=part,
                                           on_shape=lambda shape_id, outcome: tick(outcome))
        except (FileNotFoundError, ValueError) as error:
            raise fail(str(error)) from error
    report(summary, features_dir(dataset, name))


@app.command("cache-images")
def cache_images_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset folder."),
    conditioner: str = typer.Option(
        None, "--conditioner",
        help="A training config (file or packaged name) whose conditioner's image size and crop "
             "to use, or inline YAML keys: '{kind: patch, image_size: 128, crop: false}'."),
    image_size: int = typer.Option(None, "--image-size", help="Side of the stored images "
                                   "(instead of, or overriding, the conditioner's)."),
    crop: bool = typer.Option(True, "--crop/--no-crop",
                              help="Crop to the object (with --image-size; a config says it itself)."),
    shard: str = shard_option(),
) -> None:
    """Store every usable view's condition image ready at the conditioner's size (cropped, padded,
    resized, uint8) in DATASET/images/<S>[-uncropped]/<id>.safetensors: training then reads one
    small tensor per item instead of decoding and resizing the view (the same tensor); resumable."""
    from vilearn.cli.progress import ShapeTicker, progress_bar
    from vilearn.data.dataset import PreparedDataset
    from vilearn.train.images import cache_images

    if conditioner is not None:
        config = conditioner_config(conditioner, None, image_size)
        size, crop = config.image_size, config.crop
        if size is None:
            raise fail(f"--conditioner {conditioner!r}: no image_size (the DINOv2 processor's own); "
                       "give --image-size")
    elif image_size is None:
        raise fail("give --conditioner CONFIG_OR_YAML_KEYS or --image-size S")
    else:
        size = image_size
    part = parse_shard(shard)
    try:
        data = PreparedDataset(dataset)
        shapes = sum(1 for row in data.rows() if part is None or part.owns(row["id"]))
    except FileNotFoundError as error:
        raise fail(str(error)) from error
    with progress_bar() as bar:
        tick = ShapeTicker(bar, bar.add_task(f"cache-images ({size} px)", total=shapes, failed=0, rate=""),
                           fresh="cached")
        try:
            folder, summary = cache_images(dataset, size, crop, shard=part,
                                           on_shape=lambda shape_id, outcome: tick(outcome))
        except (FileNotFoundError, ValueError) as error:
            raise fail(str(error)) from error
    report(summary, folder)
