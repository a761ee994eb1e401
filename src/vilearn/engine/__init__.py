"""Reusable training machinery: EMA, LR schedules, RNG capture, checkpoints, JSONL logs, runtime.

Model-agnostic: the VAE trainer (``vilearn.vae.train``) and the diffusion trainer
(``vilearn.train``) both build on these pieces; this package imports neither, so the imports
run one way (``engine`` <- ``vae`` <- ``train``).
"""

from vilearn.engine.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from vilearn.engine.ema import EMA
from vilearn.engine.logging import JSONLLogger
from vilearn.engine.rng import capture_rng_state, restore_rng_state
from vilearn.engine.schedule import lr_factor

__all__ = ["EMA", "CheckpointError", "JSONLLogger", "capture_rng_state", "latest_checkpoint",
           "load_checkpoint", "load_latest", "lr_factor", "restore_rng_state", "save_checkpoint"]
