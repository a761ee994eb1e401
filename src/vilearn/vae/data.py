"""Training samples for the VAE, read from a prepared dataset (see ``vilearn.data``'s layout).

Sampling is a pure function of (seed, step, position): no iterator state, so a resumed run
sees exactly the batches an uninterrupted one would. Files are read per sample (the dataset
streams; nothing is held in memory beyond one batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vilearn.vae.fps import fps_indices


def read_manifest(root: str | Path, split: str | None = None) -> list[dict]:
    """Rows of ``root/manifest.jsonl`` with status "ok" (and the given split)."""
    path = Path(root) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not a prepared dataset (no manifest.jsonl)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows
            if r.get("status") == "ok" and (split is None or r.get("split") == split)]


def load_surface(root: Path, shape_id: str) -> np.ndarray:
    """(S, 6) float32 points and normals."""
    with np.load(root / "shapes" / shape_id / "surface.npz") as f:
        return np.concatenate([f["points"], f["normals"]], axis=1).astype(np.float32)


def load_occupancy(root: Path, shape_id: str) -> dict[str, np.ndarray]:
    with np.load(root / "shapes" / shape_id / "occupancy.npz") as f:
        return {k: f[k] for k in ("uniform_points", "uniform_labels", "near_points", "near_labels")}


def _pick(rng: np.random.Generator, total: int, count: int) -> np.ndarray:
    return rng.choice(total, count, replace=count > total)


@dataclass
class Batch:
    surface: torch.Tensor  # (B, S, 6)
    queries: torch.Tensor  # (B, Q, 3)
    labels: torch.Tensor  # (B, Q) float32 in {0, 1}
    anchor_index: torch.Tensor  # (B, N) int64 FPS picks into surface
    ids: list[str]

    def to(self, device) -> Batch:
        return Batch(self.surface.to(device), self.queries.to(device), self.labels.to(device),
                     self.anchor_index.to(device), self.ids)


class ShapeSampler:
    """Random sub-samples of the shapes of one split, addressed by (step, position)."""

    def __init__(self, root: str | Path, split: str, num_surface: int, num_queries: int,
                 near_fraction: float, seed: int):
        self.root = Path(root)
        self.ids = [r["id"] for r in read_manifest(root, split)]
        if not self.ids:
            raise ValueError(f"{root}: no shapes with status ok in split {split!r}")
        self.num_surface, self.num_queries = num_surface, num_queries
        self.near_fraction, self.seed = near_fraction, seed

    def __len__(self) -> int:
        return len(self.ids)

    def shape_index(self, step: int, batch_size: int, position: int) -> int:
        """Epoch-wise shuffled order: global sample k = step * batch_size + position."""
        k = step * batch_size + position
        epoch, offset = divmod(k, len(self.ids))
        return int(np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))[offset])

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shape_id = self.ids[index]
        surface = load_surface(self.root, shape_id)
        occ = load_occupancy(self.root, shape_id)
        near = int(round(self.num_queries * self.near_fraction))
        u = _pick(rng, len(occ["uniform_points"]), self.num_queries - near)
        n = _pick(rng, len(occ["near_points"]), near)
        return {
            "id": shape_id,
            "surface": surface[_pick(rng, len(surface), self.num_surface)],
            "queries": np.concatenate([occ["uniform_points"][u], occ["near_points"][n]]),
            "labels": np.concatenate([occ["uniform_labels"][u], occ["near_labels"][n]]),
        }

    def batch(self, step: int, batch_size: int, num_tokens: int, rank: int = 0,
              world: int = 1) -> Batch:
        """This process's share (positions rank, rank + world, ...) of global batch ``step``."""
        items = []
        for position in range(rank, batch_size, world):
            rng = np.random.default_rng([self.seed, step, position])
            items.append(self.sample(self.shape_index(step, batch_size, position), rng))
        surface = torch.from_numpy(np.stack([i["surface"] for i in items]))
        return Batch(
            surface=surface,
            queries=torch.from_numpy(np.stack([i["queries"] for i in items]).astype(np.float32)),
            labels=torch.from_numpy(np.stack([i["labels"] for i in items]).astype(np.float32)),
            anchor_index=fps_indices(surface[..., :3], num_tokens),
            ids=[i["id"] for i in items],
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
