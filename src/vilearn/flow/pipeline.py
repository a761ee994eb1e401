"""Images -> VAE latents: the one call ``vilearn generate`` and validation make.

Joins the shared condition preprocessing, the conditioner, the fixed visibility partition and the
Euler sampler; it uses only their public interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vilearn.dit.conditioner import ImageConditioner
from vilearn.dit.model import MMDiT
from vilearn.dit.plain import PlainDiT
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.flow.normalize import LatentStats
from vilearn.flow.sampling import sample_latents


@torch.no_grad()
def generate_latents(
    model: MMDiT | PlainDiT,
    conditioner: ImageConditioner,
    images: Sequence[Image.Image | np.ndarray | Tensor],
    *,
    n_tokens: int,
    steps: int = 50,
    cfg_scale: float = 5.0,
    shift: float = 1.0,
    seed: int = 0,
    stats: LatentStats | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample one latent set per condition image.

    Args:
        model: the denoiser, MM-DiT or cross-attention DiT (its VAPE gets the fixed partition,
            first ceil(N * r) tokens visible).
        conditioner: the image conditioner trained with it (its null condition drives CFG).
        images: PIL images or (H, W, 3|4) arrays (RGBA or object on white), prepared here with
            ``prepare_condition_image``; (3, S, S) tensors are taken as already prepared.
        n_tokens: latent tokens N. steps, cfg_scale, shift, seed: see ``sample_latents``.
        stats: latent statistics the model was trained with (denormalises the samples).
    Returns:
        (B, N, C) latents for the VAE decoder, on the model's device.
    """
    if not images:
        raise ValueError("generate_latents: no images given")
    device = next(model.parameters()).device
    size = conditioner.image_size
    prepared = [
        image if isinstance(image, Tensor) else prepare_condition_image(
            image, size=size, crop=conditioner.crop)
        for image in images
    ]
    batch = torch.stack(prepared).to(device)  # (B, 3, S, S)
    model.eval()
    conditioner.eval()
    cond = conditioner(batch)
    uncond = conditioner.null(len(prepared)).to(cond)
    if stats is not None and stats.channels != model.config.in_channels:
        raise ValueError(
            f"latent stats have {stats.channels} channels but the DiT has "
            f"{model.config.in_channels}"
        )
    return sample_latents(
        model,
        cond,
        uncond,
        n_tokens=n_tokens,
        channels=model.config.in_channels,
        steps=steps,
        shift=shift,
        cfg_scale=cfg_scale,
        seed=seed,
        visible=model.inference_visibility(len(prepared), n_tokens, device=device),
        stats=stats,
        progress=progress,
    )
