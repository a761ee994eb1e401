"""Training batches for the VAE, read through ``vilearn.data.dataset``.

Sampling is a pure function of (seed, step, position): no iterator state, so a resumed run
sees exactly the batches an uninterrupted one would. Files are read per sample (the dataset
streams; nothing is held in memory beyond one batch). A shape whose files cannot be read is
replaced by the next shape of the same epoch's order, and named in ``Batch.unreadable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vilearn.data.dataset import PreparedDataset, ShapeDataset
from vilearn.io import CorruptFileError
from vilearn.vae.fps import fps_indices


def read_manifest(root: str | Path, split: str | None = None) -> list[dict]:
    """Rows of ``root/manifest.jsonl`` with status "ok" (and the given split)."""
    return list(PreparedDataset(root).rows(split))


def load_surface(root: str | Path, shape_id: str) -> np.ndarray:
    """(S, 6) float32 points and normals."""
    surface = PreparedDataset(root).surface(shape_id)
    return np.concatenate([surface["points"], surface["normals"]], axis=1).astype(np.float32)


def load_occupancy(root: str | Path, shape_id: str) -> dict[str, np.ndarray]:
    """uniform_points (U, 3), uniform_labels (U,), near_points (M, 3), near_labels (M,)."""
    return PreparedDataset(root).occupancy(shape_id)


@dataclass
class Batch:
    surface: torch.Tensor  # (B, S, 6)
    queries: torch.Tensor  # (B, Q, 3)
    labels: torch.Tensor  # (B, Q) float32 in {0, 1}
    anchor_index: torch.Tensor  # (B, N) int64 FPS picks into surface
    ids: list[str]
    unreadable: list[str] = field(default_factory=list)  # files of the shapes replaced

    def to(self, device) -> Batch:
        return Batch(self.surface.to(device), self.queries.to(device), self.labels.to(device),
                     self.anchor_index.to(device), self.ids, self.unreadable)


class ShapeSampler:
    """Batches of ``vilearn.data.dataset.ShapeDataset`` items addressed by (step, position).

    Global sample k = step * batch_size + position is shape ``perm_epoch[k % len]`` of epoch
    ``k // len`` (a fresh permutation per epoch), drawn with the dataset's epoch set to that
    epoch, so its random subsets are a function of (seed, epoch, shape) too.
    """

    def __init__(self, root: str | Path, split: str, num_surface: int, num_queries: int,
                 near_fraction: float, seed: int):
        self.shapes = ShapeDataset(root, split, num_surface, num_queries, near_fraction, seed)
        self.root, self.ids, self.seed = Path(root), self.shapes.ids, seed
        self.num_surface = num_surface

    def __len__(self) -> int:
        return len(self.ids)

    def locate(self, step: int, batch_size: int, position: int, skip: int = 0) -> tuple[int, int]:
        """(epoch, shape index) of global sample step * batch_size + position; ``skip``: take
        the shape that many places later in the epoch's order (past unreadable ones)."""
        epoch, offset = divmod(step * batch_size + position, len(self.ids))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        return epoch, int(order[(offset + skip) % len(self.ids)])

    def batch(self, step: int, batch_size: int, num_tokens: int, rank: int = 0,
              world: int = 1) -> Batch:
        """This process's share (positions rank, rank + world, ...) of global batch ``step``."""
        items, unreadable = [], []
        for position in range(rank, batch_size, world):
            for skip in range(len(self.ids)):
                epoch, index = self.locate(step, batch_size, position, skip)
                self.shapes.set_epoch(epoch)
                try:
                    items.append(self.shapes[index])
                    break
                except (CorruptFileError, FileNotFoundError) as error:
                    unreadable.append(str(error))
            else:
                raise CorruptFileError(f"no training shape can be read: {unreadable[0]}")
        surface = torch.stack([i["surface"] for i in items]).float()
        return Batch(
            surface=surface,
            queries=torch.stack([i["queries"] for i in items]).float(),
            labels=torch.stack([i["labels"] for i in items]).float(),
            anchor_index=fps_indices(surface[..., :3], num_tokens),
            ids=[i["id"] for i in items],
            unreadable=unreadable,
        )


def tsdf_targets(batch: Batch, truncation: float) -> torch.Tensor:
    """Truncated signed distance / truncation in [-1, 1], positive inside: (B, Q).

    The distance is to the nearest of the batch's surface samples (an upper bound of the true
    distance, tight near the surface where it matters); the sign is the occupancy label.
    """
    dist = torch.stack([torch.cdist(q, s[:, :3]).min(dim=1).values
                        for q, s in zip(batch.queries, batch.surface, strict=True)])
    sign = batch.labels * 2 - 1
    return (sign * dist / truncation).clamp(-1.0, 1.0)
