"""Find VAE weights from what a user points at: a training run, a checkpoint, or weights."""

from __future__ import annotations

from pathlib import Path

import torch

from vilearn.config import ConfigError, from_dict
from vilearn.engine.checkpoint import CheckpointError, is_checkpoint_folder, load_checkpoint, load_latest
from vilearn.vae.config import VAEConfig
from vilearn.vae.loading import load_vae
from vilearn.vae.model import VecSetVAE


def resolve_vae(path: str | Path, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> VecSetVAE:
    """The VAE (EMA weights for runs and checkpoints) behind ``path``, in eval mode.

    - a training run folder (``RUN/checkpoints/latest``): its newest intact checkpoint;
    - a checkpoint folder (``meta.json`` + ``ema.safetensors``): that checkpoint;
    - anything ``load_vae`` accepts (our weights, or a Hunyuan3D-2 folder / file).

    Raises:
        FileNotFoundError: nothing at ``path``. CheckpointError: a damaged checkpoint (named).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VAE {str(path)!r}: no such file or folder")
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = load_latest(path / "checkpoints", ("ema",))
        if found is None:
            raise FileNotFoundError(f"{path}: training run without a checkpoint yet")
        path, groups, meta = found
    elif is_checkpoint_folder(path):
        groups, meta = load_checkpoint(path, ("ema",))
    else:
        return load_vae(path, device, dtype)
    if "model_config" not in meta:
        raise CheckpointError(f"{path / 'meta.json'}: no model_config (not a VAE checkpoint)")
    try:
        model = VecSetVAE(from_dict(VAEConfig, meta["model_config"], "model_config"))
    except ConfigError as error:
        raise CheckpointError(f"{path / 'meta.json'}: {error}") from error
    model.load_state_dict(groups["ema"], strict=True)
    return model.to(device=device, dtype=dtype).eval()

