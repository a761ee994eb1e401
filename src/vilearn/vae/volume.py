"""Volume decoding: occupancy logits on a regular grid, densely or coarse-to-fine.

A *field* is any function ``points (Q, 3) float32 -> values (Q,)`` with inside > ``level``
(occupancy logits, or our TSDF which is positive inside). ``field_from_vae`` and
``field_from_decoder`` make one from a VAE's decoded tokens or from any module with hy3dgen's
``geo_decoder(queries=(B, Q, 3), latents=...) -> (B, Q, 1)`` interface.

``dense_grid`` evaluates every grid point in bounded chunks. ``hierarchical_grid`` (FlashVDM's
coarse-to-fine idea) evaluates a coarse grid densely, then at each finer level only the points
of cells next to the surface: cells whose corners disagree on inside/outside or lie within
``band`` of the level, dilated by one cell. Every other fine point takes the trilinear
interpolation of the coarser level, which has the right sign away from the surface, so the
result is a complete grid (no NaN holes) that marching cubes can use as is.

Grid convention: ``resolution`` R cells per axis, (R + 1)^3 points from ``-bounds`` to
``+bounds`` inclusive, indexed [x, y, z] ("ij").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Field = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class VolumeGrid:
    """values (R + 1, R + 1, R + 1) float32 on the CPU, over the cube [-bounds, bounds]^3."""

    values: torch.Tensor
    bounds: float
    queries: int  # how many points the field was evaluated at

    @property
    def resolution(self) -> int:
        return self.values.shape[0] - 1

    @property
    def spacing(self) -> float:
        return 2 * self.bounds / self.resolution


class CountingField:
    """Wraps a field and counts the points it evaluates."""

    def __init__(self, field: Field):
        self.field = field
        self.queries = 0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        self.queries += points.shape[0]
        return self.field(points)


def field_from_decoder(geo_decoder: Callable, latents: torch.Tensor, **kwargs) -> Field:
    """A field from a hy3dgen-style ``geo_decoder(queries=, latents=)``; latents (1, N, W)."""

    def field(points: torch.Tensor) -> torch.Tensor:
        points = points.to(device=latents.device, dtype=latents.dtype)
        return geo_decoder(queries=points[None], latents=latents, **kwargs)[0, :, 0].float()

    return field


def field_from_vae(vae, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> Field:
    """A field from ``vae.decode(latents)`` output tokens (1, N, W); optional key_mask (1, N)."""
    return field_from_decoder(vae.geo_decoder, tokens, key_mask=key_mask)


def grid_coordinates(index: torch.Tensor, resolution: int, bounds: float) -> torch.Tensor:
    """Integer grid indices (Q, 3) -> points (Q, 3) float32."""
    return index.float() * (2 * bounds / resolution) - bounds


@torch.no_grad()
def evaluate(field: Field, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """Evaluate ``field`` on points (Q, 3) in chunks of at most ``chunk``: (Q,) float32 CPU."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = [field(points[i:i + chunk]).float().cpu() for i in range(0, points.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def _all_indices(resolution: int) -> torch.Tensor:
    axis = torch.arange(resolution + 1)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def dense_grid(field: Field, resolution: int = 256, bounds: float = 1.01,
               chunk: int = 65536) -> VolumeGrid:
    """Evaluate the field at every one of the (R + 1)^3 grid points, ``chunk`` points at a time.

    Memory: the grid itself plus one chunk of decoder activations (the point coordinates of
    a slab of x-planes at a time are generated on the fly).
    """
    n = resolution + 1
    values = torch.empty(n, n, n)
    counter = CountingField(field)
    axis = torch.arange(n)
    slab = max(1, chunk // (n * n))
    for x0 in range(0, n, slab):
        xs = axis[x0:x0 + slab]
        index = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        points = grid_coordinates(index, resolution, bounds)
        values[x0:x0 + len(xs)] = evaluate(counter, points, chunk).view(len(xs), n, n)
    return VolumeGrid(values, bounds, counter.queries)


def _surface_cells(values: torch.Tensor, level: float, band: float) -> torch.Tensor:
    """Cells (R, R, R) bool whose 8 corners straddle ``level`` or come within ``band`` of it."""
    v = values[None, None]
    inside = (v > level).float()
    any_in = F.max_pool3d(inside, 2, stride=1)
    all_in = -F.max_pool3d(-inside, 2, stride=1)
    near = F.max_pool3d(((v - level).abs() < band).float(), 2, stride=1)
    return ((any_in != all_in) | (near > 0))[0, 0]


def refine(field: Field, coarse: torch.Tensor, bounds: float, level: float, band: float,
           dilation: int, chunk: int) -> torch.Tensor:
    """One coarse-to-fine step: (r + 1)^3 values -> (2r + 1)^3 values.

    Fine points inside (dilated) surface cells are evaluated; the others are interpolated.
    """
    r = coarse.shape[0] - 1
    fine = F.interpolate(coarse[None, None], size=(2 * r + 1,) * 3, mode="trilinear",
                         align_corners=True)[0, 0]
    fine[::2, ::2, ::2] = coarse  # shared points are known exactly
    cells = _surface_cells(coarse, level, band).float()[None, None]
    if dilation > 0:
        cells = F.max_pool3d(cells, 2 * dilation + 1, stride=1, padding=dilation)
    fine_cells = cells.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    # A fine point is needed if any fine cell it is a corner of is needed.
    needed = F.max_pool3d(fine_cells, 2, stride=1, padding=1)[0, 0] > 0
    needed[::2, ::2, ::2] = False
    index = needed.nonzero()
    fine[needed] = evaluate(field, grid_coordinates(index, 2 * r, bounds), chunk)
    return fine


def hierarchical_grid(field: Field, resolution: int = 256, bounds: float = 1.01,
                      coarse_resolution: int = 64, level: float = 0.0, band: float = 0.95,
                      dilation: int = 1, chunk: int = 65536) -> VolumeGrid:
    """Coarse-to-fine grid: dense at ``coarse_resolution``, then doubled up to ``resolution``.

    ``resolution`` must be ``coarse_resolution * 2**k``. ``band`` (in field units) and
    ``dilation`` (in cells of the coarser level) trade queries for safety against thin parts
    that fall between coarse grid points.
    """
    levels = [coarse_resolution]
    while levels[-1] < resolution:
        levels.append(levels[-1] * 2)
    if levels[-1] != resolution or coarse_resolution < 1:
        raise ValueError(f"resolution {resolution} must be coarse_resolution "
                         f"{coarse_resolution} times a power of two")
    counter = CountingField(field)
    values = dense_grid(counter, coarse_resolution, bounds, chunk).values
    for _ in levels[1:]:
        values = refine(counter, values, bounds, level, band, dilation, chunk)
    return VolumeGrid(values, bounds, counter.queries)


def grid_iou(a: VolumeGrid, b: VolumeGrid, level: float = 0.0) -> float:
    """Intersection over union of the inside sets (value > level) of two same-size grids."""
    if a.values.shape != b.values.shape:
        raise ValueError(f"grids differ in size: {tuple(a.values.shape)} "
                         f"vs {tuple(b.values.shape)}")
    ia, ib = a.values > level, b.values > level
    union = (ia | ib).sum().item()
    return 1.0 if union == 0 else (ia & ib).sum().item() / union
