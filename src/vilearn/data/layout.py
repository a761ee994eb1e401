"""The prepared dataset on disk (docs/design.md, "Data contracts and the layout on disk").
One place knows every path.

```
DATASET/
  dataset.json                  the resolved PrepareConfig and the format version
  manifest.jsonl                one row per shape, sorted by id (see ``ShapeRecord``)
  CREDITS                       attributions the prepared models' licences require (sources that
                                know them, e.g. ``sweethome3d:``)
  manifest.d/shard-K-of-N.jsonl the rows of shard K when prepared as N shards
                                (``vilearn.data.shards``; merged into manifest.jsonl)
  shapes/<id>/record.json       the shape's manifest row; written last, it marks the shape done
  shapes/<id>/mesh.npz          the normalised mesh: vertices (V, 3) float32, faces (F, 3) int32,
                                face_colors (F, 3) uint8 (the watertight offset surface when the
                                record says ``watertight``; views always show the asset itself)
  shapes/<id>/surface.npz       points (S, 3) float32, normals (S, 3) float32: uniform samples;
                                sharp_points (K, 3) float32, sharp_normals (K, 3) float32: samples
                                on sharp edges (K = 0 for a smooth shape; absent before format 3)
  shapes/<id>/occupancy.npz     uniform_points (U, 3), uniform_labels (U,) bool,
                                near_points (M, 3), near_labels (M,) bool
  shapes/<id>/views/<k>.npz     K (3, 3), c2w (4, 4), image_size (2,) [H, W], mask (H, W) bool,
                                depth (H, W) float32, normal (H, W, 3) float16,
                                visible_points (P, 3) float32, visible_normals (P, 3) float16,
                                visible_count () int64 (hits before subsampling)
  shapes/<id>/views/<k>.png     the condition image, RGB on white (H, W, 3)
```
All coordinates are in the normalised object frame; ``<k>`` is the view index as 3 digits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

FORMAT_VERSION = 3


class DatasetLayout:
    """Paths inside a prepared dataset folder ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "dataset.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def credits(self) -> Path:
        return self.root / "CREDITS"

    @property
    def manifest_parts(self) -> Path:
        return self.root / "manifest.d"

    def shape_dir(self, shape_id: str) -> Path:
        return self.root / "shapes" / shape_id

    def record(self, shape_id: str) -> Path:
        return self.shape_dir(shape_id) / "record.json"

    def mesh(self, shape_id: str) -> Path:
        return self.shape_dir(shape_id) / "mesh.npz"

    def surface(self, shape_id: str) -> Path:
        return self.shape_dir(shape_id) / "surface.npz"

    def occupancy(self, shape_id: str) -> Path:
        return self.shape_dir(shape_id) / "occupancy.npz"

    def view(self, shape_id: str, index: int) -> Path:
        return self.shape_dir(shape_id) / "views" / f"{index:03d}.npz"

    def view_image(self, shape_id: str, index: int) -> Path:
        return self.shape_dir(shape_id) / "views" / f"{index:03d}.png"


def read_manifest(path: str | Path) -> Iterator[dict]:
    """Stream the rows of a manifest.jsonl (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
