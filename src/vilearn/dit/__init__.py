"""MM-DiT denoiser with Visibility-Aware Positional Encoding (VAPE), and image conditioners."""

from vilearn.dit.conditioner import ConditionerConfig, ImageConditioner, build_conditioner
from vilearn.dit.config import PRESETS, VAPE_KINDS, DiTConfig, dit_config
from vilearn.dit.model import MMDiT, count_parameters, hunyuan3d_denoiser_state
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.dit.vape import VAPE, fixed_partition, mask_from_indices

__all__ = [
    "PRESETS",
    "VAPE",
    "VAPE_KINDS",
    "ConditionerConfig",
    "DiTConfig",
    "ImageConditioner",
    "MMDiT",
    "build_conditioner",
    "count_parameters",
    "dit_config",
    "fixed_partition",
    "hunyuan3d_denoiser_state",
    "mask_from_indices",
    "prepare_condition_image",
]
