"""``vilearn export``: a fine-tuned run -> a released denoiser folder, laid out as its ``init.dit``.

The EMA weights of the run's latest checkpoint, with LoRA adapters merged into their layers, in
the released names, next to the init folder's config.yaml, its VAE part and the conditioner's
DINOv2: the released loaders (hy3dgen's ``from_pretrained``) read the folder as they read the
original, and so does ``init.dit`` (to fine-tune further).
"""

from __future__ import annotations

from pathlib import Path

from vilearn.config import ConfigError, to_dict
from vilearn.train.lora import merged_dit_state
from vilearn.train.pretrained import export_released


def export_run(run: str | Path, out: str | Path, half: bool = True) -> Path:
    """Export ``run`` (a run or checkpoint folder) into ``out``; returns the checkpoint path."""
    from vilearn.train.loading import load_trained

    trained = load_trained(run)
    config = trained.config
    if not config.init.dit:
        raise ConfigError(f"{run}: not a fine-tuning run (no init.dit): there is no released "
                          f"layout to export into")
    note = {"run": str(run), "step": trained.step, "vape": to_dict(config.dit)["vape"],
            "lora": to_dict(config.train.lora) if config.train.lora else None}
    return export_released(trained.model, merged_dit_state(trained.model.dit), config.init.dit,
                           None, out, half=half, note=note)
