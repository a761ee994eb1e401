"""Entry points from a denoiser config to its module, and from released weights into it."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

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


def load_released(model: MMDiT | PlainDiT, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load a released denoiser's weights strictly into ``model``, by its config:

    - ``PlainDiT``: Hunyuan3D-2.1's ``HunYuanDiTPlain`` layout (``hunyuan3d-dit-v2-1``);
    - ``MMDiT`` with ``time_embedding: step1x-3d``: Step1X-3D's ``FluxDenoiser`` layout;
    - ``MMDiT`` otherwise: hy3dgen's ``Hunyuan3DDiT`` layout (``hunyuan3d-dit-v2-0``).

    ``state_dict``: the checkpoint's tensors as read (a bare state dict or the release's
    ``{"model": ...}`` / prefixed layouts). Returns the VAPE parameters left at their init.
    """
    if isinstance(model, MMDiT) and model.config.time_embedding == "step1x-3d":
        return model.load_step1x3d_state_dict(state_dict)
    return model.load_hunyuan3d_state_dict(state_dict)
