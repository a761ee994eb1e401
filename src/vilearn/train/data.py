"""Training data of the diffusion model: (latents, a view's VST mask, that view's condition).

Reads a prepared dataset (``vilearn.data.layout``), the latents of one token count
(``DATASET/latents/<vae>/<N>/<id>.safetensors``, written by ``vilearn encode``), the
grouping next to them (``.../<N>/groups/<id>.npz``, written by ``vilearn group``) and the
condition: when the frozen encoder's features are cached (``vilearn.train.features``), those;
else the view's image, read ready-made from ``vilearn cache-images`` when the dataset has it at
the conditioner's size (``vilearn.train.images``: the same tensor, without decoding and resizing),
or prepared from the view's PNG and mask.

Reproducible order without state: item j of micro-batch m of optimizer step s on process r is
the sample at position p = ((s * A + m) * R + r) * B + j of an endless stream made of seeded
permutations of the items (one per epoch). Every random choice of that sample (the view, the
posterior noise and, with ``timesteps`` given, its flow-matching time, noise and condition
dropout) comes from generators seeded by (seed, stage, p) alone. Resuming therefore needs only
the step, and a step sees the same samples and the same draws whatever the process count R (for
the same global batch R * B).

An item whose files cannot be read is replaced by the next readable item (index + 1, + 2, ...,
same seed), so the order stays a function of the step; the item then lists what it skipped in
``unreadable`` for the trainer to count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vilearn.data.dataset import PreparedDataset
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.engine.runtime import step_seed
from vilearn.flow.timesteps import TimestepConfig, sample_timesteps
from vilearn.grouping.store import groups_path
from vilearn.io import CorruptFileError, read_npz
from vilearn.train.features import features_path, read_view_features, stored_views
from vilearn.train.images import cached_images, images_path, read_view_image
from vilearn.vae.encode import latents_dir, read_latents


def condition_image(data: PreparedDataset, shape_id: str, view: int, size: int,
                    crop: bool = True) -> torch.Tensor:
    """A stored view's image as the conditioner sees it (cropped with its mask unless ``crop`` is
    false, padded, resized): (3, size, size) float32 in [0, 1]. Training, evaluation and the demo
    all go through here."""
    mask = data.view(shape_id, view, ("mask",))["mask"]
    return prepare_condition_image(data.image(shape_id, view), size=size, mask=mask, crop=crop)


class LatentViewDataset(Dataset):
    """Shapes of ``split`` that have latents at ``tokens`` and a grouping with a non-empty view.

    ``self.skipped`` counts what was left out and why (``self.problems`` names the unreadable
    files among them). An item is addressed by a pair
    (index, seed) (see ``StepBatches``) and is a dict: ``latents`` (N, C) float32,
    ``visible`` (N,) bool, ``id`` str, ``view`` int, and the condition: ``image`` (3, S, S)
    float32 in [0, 1] (cropped to the object unless ``crop`` is false), or with ``features`` (a
    folder name under DATASET/features) the cached encoder tokens ``features`` (L_c, D) in their
    stored dtype (float16 by default). With ``features``, shapes without a features file and
    views without stored tokens are skipped. ``unreadable`` (str) names the files of the items
    this one replaced ("" when none). With ``timesteps`` (training), an item addressed by
    (index, seed) also carries its flow-matching draws: ``t`` () float32, ``noise`` (N, C)
    float32 and ``drop`` () bool (its condition replaced by the null one, probability
    ``drop_prob``).
    """

    def __init__(self, root: str | Path, vae_name: str, tokens: int, split: str | None,
                 image_size: int, posterior: str = "sample", limit: int | None = None,
                 features: str | None = None, visibility: str = "vst", crop: bool = True,
                 timesteps: TimestepConfig | None = None, drop_prob: float = 0.0):
        self.data = PreparedDataset(root)
        self.vae_name, self.tokens, self.image_size = vae_name, tokens, image_size
        self.posterior, self.features, self.visibility = posterior, features, visibility
        self.crop, self.timesteps, self.drop_prob = crop, timesteps, drop_prob
        self.folder = latents_dir(root, vae_name, tokens)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no latents at {tokens} tokens (run 'vilearn encode')")
        self.images = None if features is not None else cached_images(root, image_size, crop)
        self.items: list[tuple[str, np.ndarray]] = []  # (shape id, usable view indices)
        self.ready: set[str] = set()  # shapes whose condition images are cached
        self.skipped: Counter = Counter()
        self.problems: list[str] = []
        for row in self.data.rows(split):
            if limit is not None and len(self.items) >= limit:
                break
            shape_id = row["id"]
            if not (self.folder / f"{shape_id}.safetensors").is_file():
                self.skipped["no latents"] += 1
                continue
            path = groups_path(root, vae_name, tokens, shape_id)
            if not path.is_file():
                self.skipped["no grouping"] += 1
                continue
            try:
                views = np.flatnonzero(read_npz(path, ("visible_points",))["visible_points"] > 0)
            except CorruptFileError as error:
                self.skipped["unreadable grouping"] += 1
                self.problems.append(str(error))
                continue
            self.skipped["views without visible points"] += int(row.get("views", 0) - len(views))
            if features is not None:
                cached = features_path(root, features, shape_id)
                if not cached.is_file():
                    self.skipped["no cached features"] += 1
                    continue
                try:
                    kept = np.intersect1d(views, stored_views(cached))
                except CorruptFileError as error:
                    self.skipped["unreadable cached features"] += 1
                    self.problems.append(str(error))
                    continue
                self.skipped["views without cached features"] += len(views) - len(kept)
                views = kept
            if len(views) == 0:
                self.skipped["no usable view"] += 1
                continue
            self.items.append((shape_id, views))
            if self.images is not None and images_path(self.images, shape_id).is_file():
                self.ready.add(shape_id)
        self.skipped = +self.skipped  # drop zero counts

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, view: int, rng: np.random.Generator | None) -> dict:
        """Item ``index`` seen from ``view``; ``rng`` draws the posterior sample (None: mean).

        Raises:
            CorruptFileError / FileNotFoundError: naming the file that cannot be read.
        """
        shape_id, _ = self.items[index]
        latent = read_latents(self.folder / f"{shape_id}.safetensors")
        z = latent["mean"].numpy()
        if rng is not None and self.posterior == "sample":
            z = z + np.exp(0.5 * latent["logvar"].numpy()) * rng.standard_normal(z.shape, dtype=np.float32)
        groups = read_npz(groups_path(self.data.root, self.vae_name, self.tokens, shape_id), ("visible",))
        visible = groups["visible"][view]
        if self.visibility == "random":  # the control: a random token group of the VST's size
            chosen = (rng or np.random.default_rng(0)).permutation(len(visible))[: int(visible.sum())]
            visible = np.zeros_like(visible)
            visible[chosen] = True
        if self.features is not None:
            condition = {"features": read_view_features(
                features_path(self.data.root, self.features, shape_id), view)}
        else:
            condition = {"image": self.condition_image(shape_id, view)}
        return {"latents": torch.from_numpy(np.ascontiguousarray(z, np.float32)),
                "visible": torch.from_numpy(visible.astype(bool)),
                **condition, "id": shape_id, "view": int(view)}

    def condition_image(self, shape_id: str, view: int) -> torch.Tensor:
        if shape_id in self.ready:
            return read_view_image(images_path(self.images, shape_id), view)
        return condition_image(self.data, shape_id, view, self.image_size, self.crop)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        unreadable = []
        for offset in range(len(self.items)):
            rng = np.random.default_rng(seed)
            candidate = (index + offset) % len(self.items)
            views = self.items[candidate][1]
            try:
                item = self.load(candidate, int(views[rng.integers(len(views))]), rng)
            except (CorruptFileError, FileNotFoundError) as error:
                unreadable.append(str(error))
                continue
            if self.timesteps is not None:
                item.update(flow_draws(seed, item["latents"].shape, self.timesteps, self.drop_prob))
            return {**item, "unreadable": "\n".join(unreadable)}
        raise CorruptFileError(f"no training item can be read ({len(unreadable)} tried): {unreadable[0]}")


def flow_draws(seed: int, shape: tuple[int, ...], timesteps: TimestepConfig,
               drop_prob: float) -> dict[str, torch.Tensor]:
    """One training sample's flow-matching draws, a function of ``seed`` alone: ``t`` () float32,
    ``noise`` ``shape`` float32, ``drop`` () bool (True with probability ``drop_prob``)."""
    generator = torch.Generator().manual_seed(seed)
    t = sample_timesteps(1, timesteps, generator=generator)[0]
    noise = torch.randn(shape, generator=generator)
    drop = torch.rand((), generator=generator) < drop_prob
    return {"t": t, "noise": noise, "drop": drop}


def batch_condition(batch: dict) -> torch.Tensor:
    """The condition of a batch of items: cached ``features`` (B, L_c, D) when the dataset
    reads them, else ``image`` (B, 3, S, S); ``Denoiser`` takes either, as its config says."""
    return batch["features"] if "features" in batch else batch["image"]


class StepBatches(Sampler):
    """Batches of (index, seed) for optimizer steps [start, stop) of one stage (see module doc).

    Args:
        size: items in the dataset; batch: per-process micro-batch; accum: micro-batches per
        step; rank, world: this process and the process count; stage: the stage's index.
    """

    def __init__(self, size: int, batch: int, accum: int, seed: int, stage: int, start: int,
                 stop: int, rank: int = 0, world: int = 1):
        if size < 1:
            raise ValueError("no training items: nothing to draw batches from")
        self.size, self.batch, self.accum, self.seed, self.stage = size, batch, accum, seed, stage
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum

    def position(self, step: int, micro: int, j: int) -> int:
        return ((step * self.accum + micro) * self.world + self.rank) * self.batch + j

    def item(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        if self._perm is None or self._perm[0] != epoch:
            order = np.random.default_rng([self.seed, self.stage, epoch]).permutation(self.size)
            self._perm = (epoch, order)
        return int(self._perm[1][offset]), step_seed(self.seed, self.stage, position)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            for micro in range(self.accum):
                yield [self.item(self.position(step, micro, j)) for j in range(self.batch)]
