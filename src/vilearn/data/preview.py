"""Pictures people would rather see than read: meshes rendered from a view, and PNG grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vilearn.data.camera import Camera, look_at
from vilearn.data.render import Raycaster
from vilearn.io import write_png


def opposite_camera(camera: Camera) -> Camera:
    """The same camera moved to the other side of the object (mirrored through the origin)."""
    up = -camera.c2w[:3, 1]  # image up = -camera y
    return Camera(camera.K, look_at(-camera.center, np.zeros(3), up), camera.width, camera.height)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, camera: Camera,
                face_rgb: np.ndarray | None = None) -> np.ndarray:
    """vertices (V, 3), faces (F, 3) seen by ``camera`` -> (H, W, 3) uint8 on white.

    An empty mesh renders as a white image.
    """
    if len(faces) == 0:
        return np.full((camera.height, camera.width, 3), 255, np.uint8)
    raycaster = Raycaster(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), face_rgb)
    return raycaster.render(camera).rgb


def both_sides(vertices: np.ndarray, faces: np.ndarray, camera: Camera,
               face_rgb: np.ndarray | None = None) -> list[np.ndarray]:
    """The mesh seen by ``camera`` and from the opposite side: two (H, W, 3) uint8 images."""
    return [render_mesh(vertices, faces, camera, face_rgb),
            render_mesh(vertices, faces, opposite_camera(camera), face_rgb)]


def write_grid(path: str | Path, rows: list[list[np.ndarray]], titles: list[str] | None = None,
               tile: int = 160, row_labels: list[str] | None = None) -> Path:
    """Rows of (H, W, 3) uint8 images as one PNG of ``tile``-pixel cells, column ``titles`` on
    top and, with ``row_labels``, each row's label along the bottom of its first cell."""
    if not rows:
        raise ValueError("write_grid: no rows to draw")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"write_grid: {len(row_labels)} row labels for {len(rows)} rows")
    columns = max(len(row) for row in rows)
    header = 18 if titles else 0
    sheet = Image.new("RGB", (columns * tile, header + len(rows) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles or []):
        draw.text((c * tile + 4, 3), title, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(Image.fromarray(image).resize((tile, tile)), (c * tile, header + r * tile))
        if row_labels is not None:
            bottom = header + (r + 1) * tile
            draw.rectangle((0, bottom - 14, tile - 1, bottom - 1), fill=(255, 255, 255))
            draw.text((3, bottom - 13), row_labels[r], fill=(0, 0, 0))
    path = Path(path)
    write_png(path, sheet)
    return path
