"""One entry point from a denoiser config to its module."""

from __future__ import annotations

from vilearn.dit.config import DiTConfig, PlainDiTConfig
from vilearn.dit.model import MMDiT
from vilearn.dit.plain import PlainDiT


def build_denoiser(config: DiTConfig | PlainDiTConfig, init: bool = True) -> MMDiT | PlainDiT:
    """``DiTConfig`` -> ``MMDiT``; ``PlainDiTConfig`` -> ``PlainDiT``."""
    if isinstance(config, PlainDiTConfig):
        return PlainDiT(config, init=init)
    if isinstance(config, DiTConfig):
        return MMDiT(config, init=init)
    raise TypeError(f"not a denoiser config: {type(config).__name__}")
