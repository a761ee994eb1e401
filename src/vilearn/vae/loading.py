"""Save and load VAE weights without pickle: ours and Hunyuan3D-2's layouts.

Accepted inputs of ``load_vae``:

- ours: a folder with ``model.safetensors`` and ``config.json`` (or ``config.yaml``), or a
  ``.safetensors`` file whose metadata carries the config (``save_vae`` writes both);
- hy3dgen: a folder or file with ``model[.fp16].safetensors`` or ``model[.fp16].ckpt`` and a
  ``config.yaml`` holding ``target`` / ``params`` next to it (``hunyuan3d-vae-v2-0``,
  ``hunyuan3d-vae-v2-1``). Decoder-only checkpoints (2.0) build a decoder-only model.

``.ckpt`` files are read with ``torch.load(weights_only=True)``; a ``state_dict`` wrapper is
unwrapped. Weights always load with ``strict=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vilearn.config import ConfigError, from_dict, read_yaml, to_dict
from vilearn.io import save_safetensors, write_json
from vilearn.vae.config import VAEConfig, from_hy3dgen_params
from vilearn.vae.model import VecSetVAE

CONFIG_META_KEY = "vilearn.vae_config"
_WEIGHT_NAMES = ("model.safetensors", "model.fp16.safetensors", "model.ckpt", "model.fp16.ckpt")
_CONFIG_NAMES = ("config.json", "config.yaml", "config.yml")


def save_vae(folder: str | Path, model: VecSetVAE, state_dict: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` (config in its metadata) and ``folder/config.json``.

    ``state_dict`` overrides the model's own weights (e.g. EMA weights).
    """
    folder = Path(folder)
    config = to_dict(model.config)
    weights = folder / "model.safetensors"
    save_safetensors(weights, state_dict or model.state_dict(),
                     metadata={CONFIG_META_KEY: json.dumps(config)})
    write_json(folder / "config.json", config)
    return weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .ckpt/.pt file (no pickle beyond torch's weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(data).__name__}")
    return data


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in _WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no weights file (looked for {', '.join(_WEIGHT_NAMES)})")
    raise FileNotFoundError(f"{path}: no such file or folder")


def _config_data(weights: Path) -> dict:
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:
            meta = handle.metadata() or {}
        if CONFIG_META_KEY in meta:
            return json.loads(meta[CONFIG_META_KEY])
    for name in _CONFIG_NAMES:
        candidate = weights.parent / name
        if candidate.is_file():
            if name.endswith(".json"):
                return json.loads(candidate.read_text())
            return read_yaml(candidate)
    raise FileNotFoundError(f"{weights}: no config in its metadata and none of "
                            f"{', '.join(_CONFIG_NAMES)} next to it")


def config_from_data(data: dict, has_encoder: bool) -> VAEConfig:
    """Our config (flat, or a training config's ``model`` section) or hy3dgen's ``params``."""
    if "params" in data:
        return from_hy3dgen_params(data["params"] or {}, has_encoder)
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    return from_dict(VAEConfig, data, "vae")


def load_vae(path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> VecSetVAE:
    """Build the VAE described next to ``path`` and load its weights with strict=True."""
    weights = _weights_file(Path(path))
    state = read_state_dict(weights)
    has_encoder = any(k.startswith("encoder.") for k in state)
    config = config_from_data(_config_data(weights), has_encoder)
    if config.with_encoder != has_encoder:
        raise ConfigError(f"{weights}: config says with_encoder={config.with_encoder} but the "
                          f"weights {'have' if has_encoder else 'lack'} encoder parameters")
    model = VecSetVAE(config)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()
