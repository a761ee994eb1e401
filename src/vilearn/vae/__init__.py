"""The VecSet VAE: model, Hunyuan3D-2 compatible loading, volume decoding and mesh extraction."""

from vilearn.vae.config import PRESETS, VAEConfig, preset
from vilearn.vae.distribution import DiagonalGaussian
from vilearn.vae.fps import fps_indices
from vilearn.vae.model import Encoded, VecSetVAE

__all__ = ["PRESETS", "DiagonalGaussian", "Encoded", "VAEConfig", "VecSetVAE", "fps_indices",
           "preset"]
