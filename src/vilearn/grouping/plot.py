"""Tiny PIL charts (no plotting dependency): a histogram panel and a row of panels."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 520, 300, 36


def histogram_panel(values: np.ndarray, bins: np.ndarray, title: str,
                    marks: dict[str, float] | None = None) -> Image.Image:
    """A bar chart of ``np.histogram(values, bins)`` with the x range labelled and vertical
    lines at ``marks`` (name -> x value)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 6), title, fill=(0, 0, 0))
    counts, edges = np.histogram(values, bins)
    x0, x1, y0, y1 = MARGIN, WIDTH - 12, HEIGHT - MARGIN, MARGIN
    span = edges[-1] - edges[0]

    def x_of(x: float) -> float:
        return x0 + (x - edges[0]) / span * (x1 - x0)

    peak = max(1, int(counts.max()) if len(counts) else 1)
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        if count:
            draw.rectangle([x_of(lo) + 1, y0 - (y0 - y1) * count / peak, x_of(hi) - 1, y0],
                           fill=(70, 110, 180))
    draw.line([x0, y0, x1, y0], fill=(0, 0, 0))
    draw.text((x0, y0 + 4), f"{edges[0]:.3g}", fill=(0, 0, 0))
    draw.text((x1 - 30, y0 + 4), f"{edges[-1]:.3g}", fill=(0, 0, 0))
    draw.text((4, y1), str(peak), fill=(0, 0, 0))
    for i, (name, x) in enumerate((marks or {}).items()):
        colour = [(200, 40, 40), (30, 150, 60), (120, 60, 160)][i % 3]
        draw.line([x_of(x), y0, x_of(x), y1], fill=colour, width=2)
        draw.text((x_of(x) + 3, y1 + 12 * i), name, fill=colour)
    return image


def side_by_side(panels: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Panels of equal size in a grid (one row by default)."""
    columns = columns or len(panels)
    w, h = panels[0].size
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % columns) * w, (i // columns) * h))
    return sheet
