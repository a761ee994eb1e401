"""Image conditioners: images (B, 3, H, W) in [0, 1] -> image tokens (B, L_c, D).

- ``dinov2``: a DINOv2 model through ``transformers`` (local folder or hub id), frozen, with its
  own image processor; the tokens are the last hidden states including CLS (Hunyuan3D-2's choice).
- ``patch``: the offline default, a small ViT-style patch encoder trained jointly with the DiT.

Classifier-free guidance: ``ImageConditioner`` replaces each sample's tokens by the null condition
with probability ``drop_prob`` in training; ``null(batch)`` gives the unconditional input for
sampling. The null condition is zeros (as Hunyuan3D-2, so its weights guide correctly) or learned.
``condition(tokens)`` applies the same dropout to tokens encoded earlier (a frozen encoder's
features cached in the dataset by ``vilearn cache-features``).
Images are prepared by ``vilearn.dit.preprocess.prepare_condition_image`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass
class ConditionerConfig:
    """Attributes:
    kind: ``patch`` (offline, trained jointly) or ``dinov2`` (frozen, via transformers).
    model: DINOv2 folder or hub id (``facebook/dinov2-giant`` for Hunyuan3D-2's 1536 width).
    image_size: side the encoder sees; ``dinov2``: overrides the processor's resize/crop when
        set (Hunyuan3D-2 uses 518), else the processor's own size.
    patch_size, width, depth, num_heads: the patch encoder's shape.
    drop_prob: probability of replacing a sample's condition by the null one in training.
    null: ``zero`` or ``learned`` null condition.
    crop: condition images are cropped to the object (the default, Hunyuan3D-2's preprocessing)
        or keep the camera's framing (``false``, for view-aligned data: the framing carries the
        object's size and place in the view frame); see ``prepare_condition_image``.
    cached: ``dinov2`` only. Training reads the encoder's output for each view from
        ``DATASET/features/<name>/`` (written beforehand by ``vilearn cache-features``) instead
        of running the frozen encoder on the view's image; condition dropout and the null
        condition are unchanged. The encoder is still built (frozen, not checkpointed) so the
        trained model conditions on new images at inference (``generate``, validation samples).
        Features are stored in float16 (by default), so the tokens differ from on-the-fly ones
        by that rounding (relative 2^-11).
    """

    kind: Literal["patch", "dinov2"] = "patch"
    model: str = "facebook/dinov2-giant"
    image_size: int | None = 224
    patch_size: int = 16
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    drop_prob: float = 0.1
    null: Literal["zero", "learned"] = "zero"
    cached: bool = False
    crop: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {self.drop_prob!r}")
        if self.cached and self.kind != "dinov2":
            raise ValueError(f"cached: only a frozen encoder (kind dinov2) has features to cache; "
                             f"kind {self.kind!r} trains jointly")
        if self.kind == "patch":
            if self.image_size is None or self.image_size % self.patch_size:
                raise ValueError(
                    f"image_size {self.image_size} must be a multiple of "
                    f"patch_size {self.patch_size}"
                )
            if self.width % self.num_heads:
                raise ValueError(
                    f"width {self.width} must be divisible by num_heads {self.num_heads}"
                )


class PatchEncoder(nn.Module):
    """Small ViT: patchify, CLS + learned positions, pre-norm transformer. -> (B, 1 + P, width)."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int):
        super().__init__()
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        n_patches = (image_size // patch_size) ** 2
        self.width, self.n_tokens = width, 1 + n_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n_patches, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            num_heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) in [0, 1] -> (B, 1 + (S / patch)^2, width)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"patch encoder expects (B, 3, {self.image_size}, {self.image_size}) images, "
                f"got {tuple(images.shape)}"
            )
        patches = self.patch_embed(images * 2.0 - 1.0).flatten(2).transpose(1, 2)  # (B, P, W)
        tokens = torch.cat((self.cls_token.expand(len(images), -1, -1), patches), 1)
        return self.norm(self.blocks(tokens + self.pos_embed))


class DinoV2Encoder(nn.Module):
    """Frozen DINOv2 from a local folder or hub id, preprocessed as its image processor says.

    The processor's settings (shortest-edge resize, centre crop, mean/std) are applied in torch on
    the images' device: the processors' PIL fallback would round float images to 8 bits.
    """

    def __init__(self, model: str, image_size: int | None = None):
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel

        try:
            self.model = AutoModel.from_pretrained(model)
            processor = AutoImageProcessor.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load DINOv2 {model!r}: {error}") from error
        self.model.eval().requires_grad_(False)
        self.resize = image_size or processor.size["shortest_edge"]
        crop = processor.crop_size
        self.crop = (image_size, image_size) if image_size else (crop["height"], crop["width"])
        self.register_buffer("mean", torch.tensor(processor.image_mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(processor.image_std).view(1, 3, 1, 1), False)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def n_tokens(self) -> int:
        """CLS + registers (if any) + patches of the crop."""
        patch = self.model.config.patch_size
        extra = 1 + getattr(self.model.config, "num_register_tokens", 0)
        return extra + (self.crop[0] // patch) * (self.crop[1] // patch)

    def train(self, mode: bool = True) -> DinoV2Encoder:
        super().train(mode)
        self.model.eval()  # frozen: never dropout
        return self

    def pixels(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> resized, centre-cropped, normalised (B, 3, crop_h, crop_w)."""
        h, w = images.shape[-2:]
        scale = self.resize / min(h, w)
        size = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if size != (h, w):
            images = nn.functional.interpolate(
                images.float(), size=size, mode="bicubic", antialias=True, align_corners=False
            )
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (images.float() - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> last hidden states (B, 1 + P, hidden) incl. CLS."""
        pixels = self.pixels(images).to(self.model.dtype)
        return self.model(pixel_values=pixels).last_hidden_state


def drop_condition(tokens: Tensor, null: Tensor, prob: float, generator=None) -> Tensor:
    """Replace each sample's tokens (B, L, D) by ``null`` (L, D) with probability ``prob``."""
    if prob <= 0.0:
        return tokens
    drop = torch.rand(tokens.shape[0], generator=generator).to(tokens.device) < prob
    return torch.where(drop[:, None, None], null.to(tokens), tokens)


class ImageConditioner(nn.Module):
    """Encoder + null condition + CFG dropout. ``out_dim`` is the DiT's ``context_in_dim``."""

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        self.config = config
        if config.kind == "dinov2":
            self.encoder = DinoV2Encoder(config.model, config.image_size)
        else:
            self.encoder = PatchEncoder(
                config.image_size, config.patch_size, config.width, config.depth, config.num_heads
            )
        self.out_dim, self.n_tokens = self.encoder.width, self.encoder.n_tokens
        self.null_tokens = nn.Parameter(
            torch.zeros(self.n_tokens, self.out_dim), requires_grad=config.null == "learned"
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, L_c, out_dim); in training mode a fraction
        ``drop_prob`` of the samples get the null condition."""
        return self.condition(self.encoder(images), generator)

    def condition(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Encoder tokens (B, L_c, out_dim), e.g. cached ones in float16 -> (B, L_c, out_dim) in
        the null condition's dtype; in training mode a fraction ``drop_prob`` become null."""
        if tokens.shape[1:] != self.null_tokens.shape:
            raise ValueError(f"condition tokens {tuple(tokens.shape)} do not fit this conditioner: "
                             f"expected (B, {self.n_tokens}, {self.out_dim})")
        tokens = tokens.to(self.null_tokens.dtype)
        if self.training:
            tokens = drop_condition(tokens, self.null_tokens, self.config.drop_prob, generator)
        return tokens

    @property
    def image_size(self) -> int:
        """Side of the square images to prepare (``prepare_condition_image(image, size=...)``)."""
        if self.config.kind == "dinov2":
            return self.config.image_size or self.encoder.crop[0]
        return self.config.image_size

    @property
    def crop(self) -> bool:
        """Whether condition images are cropped to the object (``prepare_condition_image(crop=)``)."""
        return self.config.crop

    def null(self, batch: int) -> Tensor:
        """The unconditional input for classifier-free guidance: (batch, L_c, out_dim)."""
        return self.null_tokens.expand(batch, -1, -1)


def build_conditioner(
    config: ConditionerConfig, context_in_dim: int | None = None
) -> ImageConditioner:
    """Build the conditioner; ``context_in_dim`` (the DiT's) is checked against its width."""
    conditioner = ImageConditioner(config)
    if context_in_dim is not None and conditioner.out_dim != context_in_dim:
        raise ValueError(
            f"conditioner width {conditioner.out_dim} ({config.kind}) does not match the DiT's "
            f"context_in_dim {context_in_dim}"
        )
    return conditioner
