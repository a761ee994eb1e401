"""Readers of a prepared dataset. They stream from the manifest and load one item at a time.

A file that exists but cannot be read raises ``vilearn.io.CorruptFileError`` naming it, so a job
can record the bad item and go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vilearn.data.camera import Camera
from vilearn.data.layout import DatasetLayout, read_manifest
from vilearn.io import read_image, read_npz


class PreparedDataset:
    """A prepared dataset folder: its manifest rows and the files of each shape and view."""

    def __init__(self, root: str | Path):
        self.layout = DatasetLayout(root)
        if not self.layout.manifest.is_file():
            raise FileNotFoundError(
                f"dataset {str(root)!r}: no manifest.jsonl (run 'vilearn prepare SOURCE {root}' first)"
            )

    @property
    def root(self) -> Path:
        return self.layout.root

    def rows(self, split: str | None = None, status: str | None = "ok") -> Iterator[dict]:
        """Manifest rows, streamed, filtered by split ('train' / 'val' / None) and status."""
        for row in read_manifest(self.layout.manifest):
            if status is not None and row.get("status") != status:
                continue
            if split is not None and row.get("split") != split:
                continue
            yield row

    def ids(self, split: str | None = None) -> list[str]:
        """The ids of the usable ('ok') shapes of ``split``, in manifest order."""
        return [row["id"] for row in self.rows(split)]

    def mesh(self, shape_id: str) -> dict[str, np.ndarray]:
        """The normalised mesh: vertices (V, 3) float32, faces (F, 3) int32, face_colors (F, 3) uint8."""
        return read_npz(self.layout.mesh(shape_id))

    def surface(self, shape_id: str) -> dict[str, np.ndarray]:
        """points (S, 3) float32, normals (S, 3) float32."""
        return read_npz(self.layout.surface(shape_id))

    def occupancy(self, shape_id: str) -> dict[str, np.ndarray]:
        """uniform_points (U, 3), uniform_labels (U,), near_points (M, 3), near_labels (M,)."""
        return read_npz(self.layout.occupancy(shape_id))

    def view(self, shape_id: str, index: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The arrays of one view (see ``vilearn.data.layout``); only ``keys`` when given."""
        return read_npz(self.layout.view(shape_id, index), keys)

    def camera(self, shape_id: str, index: int) -> Camera:
        return Camera.from_arrays(self.view(shape_id, index))

    def image(self, shape_id: str, index: int) -> np.ndarray:
        """The condition image, (H, W, 3) uint8 on white."""
        return read_image(self.layout.view_image(shape_id, index))


def _subset(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``size`` indices into ``count`` items: without replacement when possible."""
    return rng.choice(count, size=size, replace=size > count)


class ShapeDataset(Dataset):
    """Shapes for VAE training: a random surface subset and occupancy queries per item.

    Each item is a dict: ``surface`` (S, 6) float32 xyz + normal, ``queries`` (Q, 3) float32,
    ``labels`` (Q,) float32 (1 = inside), ``id`` str. ``near_fraction`` of the queries come
    from the near-surface set, the rest from the uniform set. With ``seed`` set, item i's
    subset is a function of (seed, epoch, i); call ``set_epoch`` to draw new subsets.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        num_surface: int = 4096,
        num_queries: int = 4096,
        near_fraction: float = 0.5,
        seed: int = 0,
        ids: list[str] | None = None,
    ):
        if not 0.0 <= near_fraction <= 1.0:
            raise ValueError(f"near_fraction must be in [0, 1], got {near_fraction}")
        self.data = PreparedDataset(root)
        self.ids = list(ids) if ids is not None else self.data.ids(split)
        if not self.ids:
            raise ValueError(f"dataset {str(root)!r}: no usable shapes in split {split!r}")
        self.num_surface, self.num_queries = num_surface, num_queries
        self.near_fraction, self.seed, self.epoch = near_fraction, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        shape_id = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        surface = self.data.surface(shape_id)
        pick = _subset(rng, len(surface["points"]), self.num_surface)
        occupancy = self.data.occupancy(shape_id)
        num_near = int(round(self.num_queries * self.near_fraction))
        near = _subset(rng, len(occupancy["near_points"]), num_near)
        uniform = _subset(rng, len(occupancy["uniform_points"]), self.num_queries - num_near)
        queries = np.concatenate([occupancy["uniform_points"][uniform], occupancy["near_points"][near]])
        labels = np.concatenate([occupancy["uniform_labels"][uniform], occupancy["near_labels"][near]])
        return {
            "surface": torch.from_numpy(
                np.concatenate([surface["points"][pick], surface["normals"][pick]], axis=1)
            ),
            "queries": torch.from_numpy(queries),
            "labels": torch.from_numpy(labels.astype(np.float32)),
            "id": shape_id,
        }


class ViewDataset(Dataset):
    """Every (shape, view) pair of a split.

    Each item is a dict: ``image`` (H, W, 3) uint8, ``mask`` (H, W) bool, ``K`` (3, 3),
    ``c2w`` (4, 4), ``visible_points`` (P, 3) float32, ``id`` str, ``view`` int. Only the
    manifest's view counts are held in memory.
    """

    def __init__(self, root: str | Path, split: str | None = "train"):
        self.data = PreparedDataset(root)
        self.index: list[tuple[str, int]] = [
            (row["id"], k) for row in self.data.rows(split) for k in range(row.get("views", 0))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        shape_id, view = self.index[index]
        arrays = self.data.view(shape_id, view)
        return {
            "image": torch.from_numpy(self.data.image(shape_id, view).copy()),
            "mask": torch.from_numpy(arrays["mask"]),
            "K": torch.from_numpy(arrays["K"]),
            "c2w": torch.from_numpy(arrays["c2w"]),
            "visible_points": torch.from_numpy(arrays["visible_points"]),
            "id": shape_id,
            "view": view,
        }
