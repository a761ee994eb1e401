"""Reusable training machinery: EMA, LR schedules, RNG capture, checkpoints, JSONL logs.

Model-agnostic: the VAE trainer (``vilearn.vae.train``) and the diffusion trainer both build
on these pieces.
"""

from vilearn.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vilearn.train.ema import EMA
from vilearn.train.logging import JSONLLogger
from vilearn.train.rng import capture_rng_state, restore_rng_state
from vilearn.train.schedule import lr_factor

__all__ = ["EMA", "JSONLLogger", "capture_rng_state", "latest_checkpoint", "load_checkpoint",
           "lr_factor", "restore_rng_state", "save_checkpoint"]
