"""``vilearn inspect``: what a prepared dataset holds, in numbers and in one contact sheet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vilearn.data.camera import Camera
from vilearn.data.dataset import PreparedDataset
from vilearn.data.prepare import reason_kind
from vilearn.data.sweethome3d import is_attribution_license
from vilearn.io import CorruptFileError, read_npz, write_png


@dataclass
class DatasetStats:
    shapes: int = 0
    ok: int = 0
    failed: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    views: int = 0
    faces: dict[str, float] = field(default_factory=dict)
    inside_fraction: dict[str, float] = field(default_factory=dict)
    visible_count: dict[str, float] = field(default_factory=dict)
    watertight: int = 0
    with_warnings: int = 0
    licenses: dict[str, int] = field(default_factory=dict)
    attributions: list[str] = field(default_factory=list)


def _describe(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, float)
    p5, p50, p95 = np.percentile(array, [5, 50, 95])
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
            "p5": float(p5), "median": float(p50), "p95": float(p95), "max": float(array.max())}


def dataset_stats(data: PreparedDataset) -> DatasetStats:
    """Counts, failure reasons and point/view statistics from the manifest alone."""
    stats = DatasetStats()
    splits, reasons, licenses = Counter(), Counter(), Counter()
    faces, inside, visible = [], [], []
    credited: dict[tuple[str, str, str], list[str]] = {}
    for row in data.rows(status=None):
        stats.shapes += 1
        if row["status"] != "ok":
            stats.failed += 1
            reasons[reason_kind(row["reason"])] += 1
            continue
        stats.ok += 1
        splits[row["split"]] += 1
        stats.views += row["views"]
        faces.append(row["faces"])
        inside.append(row["inside_fraction"])
        visible.extend(row["visible_counts"])
        stats.watertight += bool(row.get("watertight"))
        stats.with_warnings += bool(row.get("warnings"))
        meta = row.get("meta") or {}
        if meta.get("license"):
            licenses[meta["license"]] += 1
        if is_attribution_license(meta.get("license", "")):
            who = meta.get("original_author") or meta.get("creator") or "unknown author"
            key = (who, meta.get("catalog", ""), meta["license"])
            credited.setdefault(key, []).append(meta.get("name", row["id"]))
    stats.splits, stats.reasons, stats.licenses = dict(splits), dict(reasons), dict(licenses)
    stats.attributions = [f"{who} ({catalog}; {license}): {', '.join(sorted(names))}"
                          for (who, catalog, license), names in sorted(credited.items())]
    stats.faces, stats.inside_fraction = _describe(faces), _describe(inside)
    stats.visible_count = _describe(visible)
    return stats


def overlay_visible_points(image: np.ndarray, camera: Camera, points: np.ndarray) -> Image.Image:
    """The condition image with ``points`` (P, 3) projected through ``camera`` as red dots."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    uv, z = camera.project(points)
    for u, v in uv[z > 0]:
        draw.point((float(u), float(v)), fill=(220, 30, 30))
    return canvas


def unreadable_files(data: PreparedDataset, on_shape=None) -> dict[str, str]:
    """Every file of every usable shape read completely: {file: what is wrong} for those that
    cannot be (``vilearn inspect --verify``). ``on_shape(id)`` is called after each shape."""
    layout, problems = data.layout, {}
    for row in data.rows():
        shape_id = row["id"]
        paths = [layout.mesh(shape_id), layout.surface(shape_id), layout.occupancy(shape_id)]
        paths += [p for k in range(row["views"]) for p in (layout.view(shape_id, k),
                                                          layout.view_image(shape_id, k))]
        for path in paths:
            try:
                if path.suffix == ".png":
                    data.image(shape_id, int(path.stem))
                else:
                    read_npz(path)
            except (CorruptFileError, FileNotFoundError) as error:
                problems[f"{shape_id} / {path.relative_to(layout.shape_dir(shape_id))}"] = str(error)
        if on_shape:
            on_shape(shape_id)
    return problems


def contact_sheet(
    data: PreparedDataset, out: str | Path, count: int = 24, columns: int = 6, tile: int = 192,
    unreadable: dict[str, str] | None = None,
) -> Path:
    """A PNG grid: for the first ``count`` usable views, the image and its projected visible points.

    Each cell shows the condition image (left) and the same image with the stored visible
    points projected through the stored camera (right): the dots must cover the object exactly.
    Views whose files cannot be read are left out and recorded in ``unreadable`` ({view: reason}).
    """
    cells = []
    for row in data.rows():
        for view in range(row["views"]):
            if len(cells) == count:
                break
            try:
                arrays = data.view(row["id"], view)
                image = data.image(row["id"], view)
            except (CorruptFileError, FileNotFoundError) as error:
                if unreadable is not None:
                    unreadable[f"{row['id']} / view {view}"] = str(error)
                continue
            overlay = overlay_visible_points(image, Camera.from_arrays(arrays), arrays["visible_points"])
            pair = Image.new("RGB", (2 * tile, tile), "white")
            pair.paste(Image.fromarray(image).resize((tile, tile)), (0, 0))
            pair.paste(overlay.resize((tile, tile)), (tile, 0))
            ImageDraw.Draw(pair).text((4, 4), f"{row['id']} / view {view}", fill=(0, 0, 0))
            cells.append(pair)
        if len(cells) == count:
            break
    if not cells:
        raise ValueError(f"dataset {data.root}: no usable view to show")
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * 2 * tile, rows * tile), "white")
    for i, cell in enumerate(cells):
        sheet.paste(cell, ((i % columns) * 2 * tile, (i // columns) * tile))
    out = Path(out)
    write_png(out, sheet)
    return out
