"""Load a trained diffusion run for sampling: config, EMA weights, latent statistics, and the
VAE it was trained with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from vilearn.config import ConfigError, from_dict
from vilearn.engine.checkpoint import CheckpointError, is_checkpoint_folder, load_checkpoint, load_latest
from vilearn.flow.normalize import LatentStats
from vilearn.io import read_json
from vilearn.train.config import TrainConfig
from vilearn.train.denoiser import Denoiser
from vilearn.vae.identity import LatentsError, VAEIdentity, load_identified


@dataclass
class TrainedModel:
    model: Denoiser  # EMA weights, eval mode
    config: TrainConfig  # dataset and vae as absolute paths
    stats: dict[int, LatentStats]  # per token count the model was trained at
    step: int
    vae_record: dict | None = None  # RUN/vae.json: the VAE it was trained with (None: older runs)

    @property
    def tokens(self) -> int:
        """The token count of the last stage (what the model was trained at most recently)."""
        return self.config.stages[-1].tokens


def run_path(text: str, run_folder: Path) -> str:
    """A path a run's config refers to, made absolute. Runs store absolute paths; older ones
    stored them as given on the command line, relative to a folder that is no longer known:
    the current folder, then each folder above the run, is tried."""
    if not text or Path(text).is_absolute():
        return text
    for base in (Path.cwd(), *run_folder.resolve().parents):
        if (base / text).exists():
            return str((base / text).resolve())
    return str(Path(text).resolve())


def load_trained(run: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A run folder (its newest intact checkpoint) or a checkpoint folder -> the EMA model.

    Raises:
        FileNotFoundError: no run or checkpoint at ``run``. CheckpointError: a damaged
        checkpoint (the file is named; a run falls back to an older intact one with a warning).
    """
    from vilearn.train.trainer import build_model

    path = Path(run)
    if (path / "checkpoints").is_dir():
        found = load_latest(path / "checkpoints", ("ema",))
        if found is None:
            raise FileNotFoundError(f"{run}: training run without a checkpoint yet")
        path, groups, meta = found
    elif is_checkpoint_folder(path):
        groups, meta = load_checkpoint(path, ("ema",))
    else:
        raise FileNotFoundError(f"{run}: neither a training run nor a checkpoint folder")
    run_folder = path.parent.parent
    if "config" not in meta:
        raise CheckpointError(f"{path / 'meta.json'}: no config (not a diffusion checkpoint)")
    try:
        config = from_dict(TrainConfig, meta["config"], "checkpoint config")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    init = dataclasses.replace(config.init, dit=run_path(config.init.dit, run_folder))
    config = dataclasses.replace(config, dataset=run_path(config.dataset, run_folder),
                                 vae=run_path(config.vae, run_folder), init=init)
    model = build_model(config)
    model.load_trainable_state({**model.trainable_state(), **groups["ema"]})
    stats = {}
    for file in sorted((run_folder / "latent_stats").glob("*.json")):
        stats[int(file.stem)] = LatentStats.load(file)
    if not stats:
        raise FileNotFoundError(f"{run_folder}: no latent_stats/ (was it made by 'vilearn train'?)")
    record_path = run_folder / "vae.json"
    record = read_json(record_path) if record_path.is_file() else None
    return TrainedModel(model.to(device).eval(), config, stats, int(meta["step"]), record)


def latents_key(trained: TrainedModel) -> str:
    """The latents folder (``<name>-<hash8>``) the run trained on: from ``RUN/vae.json``, or,
    for older runs, from its VAE's identity."""
    if trained.vae_record is not None and "key" in trained.vae_record:
        return trained.vae_record["key"]
    return load_identified(trained.config.vae, trained.config.vae_name)[1].key


def run_vae(trained: TrainedModel, path: str | Path | None = None,
            device: str | torch.device = "cpu") -> tuple[object, VAEIdentity]:
    """(VAE, identity) to decode the run's samples with: the run's own, or ``path``, which must
    hold the same weights (a copy elsewhere is fine; another VAE would decode nonsense).

    Raises:
        LatentsError: the VAE is not the one the run was trained with.
    """
    source = path or trained.config.vae
    vae, identity = load_identified(source, trained.config.vae_name, device)
    record = trained.vae_record
    if record is not None and record.get("hash") != identity.digest:
        raise LatentsError(f"VAE {str(source)!r} (hash {identity.digest[:12]}) is not the one this run "
                           f"was trained with ({record.get('path')!r}, hash {str(record.get('hash'))[:12]}): "
                           "retrained or replaced since; decode with the original weights")
    return vae, identity
