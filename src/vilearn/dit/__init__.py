"""Denoisers with Visibility-Aware Positional Encoding (VAPE), and image conditioners.

Two denoisers: the MM-DiT (``MMDiT``, Hunyuan3D-2's and Step1X-3D's kind, the paper's setting)
and the cross-attention DiT (``PlainDiT``, Hunyuan3D-2.1's ``HunYuanDiTPlain``);
``build_denoiser`` picks one from its config.
"""

from vilearn.dit.build import build_denoiser, load_released
from vilearn.dit.conditioner import ConditionerConfig, ImageConditioner, build_conditioner
from vilearn.dit.config import (
    PLAIN_PRESETS,
    PRESETS,
    VAPE_KINDS,
    DiTConfig,
    PlainDiTConfig,
    denoiser_config,
    dit_config,
    plain_dit_config,
)
from vilearn.dit.loading import denoiser_state, load_strict
from vilearn.dit.model import MMDiT, count_parameters
from vilearn.dit.plain import PlainDiT
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.dit.step1x import step1x3d_to_mmdit
from vilearn.dit.vape import VAPE, fixed_partition, mask_from_indices

__all__ = [
    "PLAIN_PRESETS",
    "PRESETS",
    "VAPE",
    "VAPE_KINDS",
    "ConditionerConfig",
    "DiTConfig",
    "ImageConditioner",
    "MMDiT",
    "PlainDiT",
    "PlainDiTConfig",
    "build_conditioner",
    "build_denoiser",
    "count_parameters",
    "denoiser_config",
    "denoiser_state",
    "dit_config",
    "fixed_partition",
    "load_released",
    "load_strict",
    "mask_from_indices",
    "plain_dit_config",
    "prepare_condition_image",
    "step1x3d_to_mmdit",
]
