"""Load a trained diffusion run for sampling: config, EMA weights, latent statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vilearn.config import ConfigError, from_dict
from vilearn.engine.checkpoint import latest_checkpoint, load_checkpoint
from vilearn.flow.normalize import LatentStats
from vilearn.train.config import TrainConfig
from vilearn.train.denoiser import Denoiser


@dataclass
class TrainedModel:
    model: Denoiser  # EMA weights, eval mode
    config: TrainConfig
    stats: dict[int, LatentStats]  # per token count the model was trained at
    step: int

    @property
    def tokens(self) -> int:
        """The token count of the last stage (what the model was trained at most recently)."""
        return self.config.stages[-1].tokens


def load_trained(run: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A run folder (its latest checkpoint) or a checkpoint folder -> the EMA model."""
    from vilearn.train.trainer import build_model

    path = Path(run)
    if (path / "checkpoints").is_dir():
        checkpoint = latest_checkpoint(path / "checkpoints")
        if checkpoint is None:
            raise FileNotFoundError(f"{run}: training run without a checkpoint yet")
        path = checkpoint
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{run}: neither a training run nor a checkpoint folder")
    run_folder = path.parent.parent
    groups, meta = load_checkpoint(path)
    try:
        config = from_dict(TrainConfig, meta["config"], "checkpoint config")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    model = build_model(config)
    model.load_trainable_state({**model.trainable_state(), **groups["ema"]})
    stats = {}
    for file in sorted((run_folder / "latent_stats").glob("*.json")):
        stats[int(file.stem)] = LatentStats.load(file)
    if not stats:
        raise FileNotFoundError(f"{run_folder}: no latent_stats/ (was it made by 'vilearn train'?)")
    return TrainedModel(model.to(device).eval(), config, stats, int(meta["step"]))
