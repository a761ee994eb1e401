"""Find VAE weights from what a user points at: a training run, a checkpoint, or weights."""

from __future__ import annotations

from pathlib import Path

import torch

from vilearn.config import from_dict
from vilearn.engine.checkpoint import latest_checkpoint, load_checkpoint
from vilearn.vae.config import VAEConfig
from vilearn.vae.loading import load_vae
from vilearn.vae.model import VecSetVAE


def resolve_vae(path: str | Path, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> VecSetVAE:
    """The VAE (EMA weights for runs and checkpoints) behind ``path``, in eval mode.

    - a training run folder (``RUN/checkpoints/latest``): its latest checkpoint;
    - a checkpoint folder (``meta.json`` + ``ema.safetensors``): that checkpoint;
    - anything ``load_vae`` accepts (our weights, or a Hunyuan3D-2 folder / file).
    """
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        checkpoint = latest_checkpoint(path / "checkpoints")
        if checkpoint is None:
            raise FileNotFoundError(f"{path}: training run without a checkpoint yet")
        path = checkpoint
    if path.is_dir() and (path / "meta.json").is_file():
        groups, meta = load_checkpoint(path)
        model = VecSetVAE(from_dict(VAEConfig, meta["model_config"], "model_config"))
        model.load_state_dict(groups["ema"], strict=True)
        return model.to(device=device, dtype=dtype).eval()
    return load_vae(path, device, dtype)


def vae_name(path: str | Path) -> str:
    """A folder-safe name for latents made by this VAE.

    RUN, RUN/vae, RUN/vae/model.safetensors and RUN/checkpoints/step-N all give RUN's name;
    other weights give their folder's name (``hunyuan3d-vae-v2-0``).
    """
    path = Path(path).resolve()
    if path.is_file():
        path = path.parent
    if path.parent.name == "checkpoints":
        return path.parent.parent.name
    if path.name == "vae" and (path.parent / "checkpoints").is_dir():
        return path.parent.name
    return path.name
