"""Image conditioning: shared preprocessing, DINOv2 via transformers, patch encoder, CFG drop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vilearn.dit.conditioner import ConditionerConfig, build_conditioner, drop_condition
from vilearn.dit.preprocess import prepare_condition_image


def object_image(h=60, w=90, box=(10, 30, 20, 70), color=(200, 0, 0)):
    """White RGB image with a coloured rectangle rows box[0]:box[1], cols box[2]:box[3]."""
    image = np.full((h, w, 3), 255, np.uint8)
    image[box[0] : box[1], box[2] : box[3]] = color
    return image


def test_preprocess_crops_to_object_and_pads_to_square():
    out = prepare_condition_image(object_image(), size=100, border_ratio=0.2)
    assert out.shape == (3, 100, 100) and out.dtype == torch.float32
    red = (out[0] > 0.6) & (out[1] < 0.4)  # the object
    rows, cols = torch.nonzero(red, as_tuple=True)
    # a 20 x 50 object: its long side fills (1 - 0.2) of the square, centred
    assert abs((cols.max() - cols.min() + 1).item() - 80) <= 2
    assert abs((rows.max() - rows.min() + 1).item() - 32) <= 2
    assert abs((cols.min() + cols.max()).item() / 2 - 49.5) <= 1.5
    assert abs((rows.min() + rows.max()).item() / 2 - 49.5) <= 1.5
    assert out[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # white padding


def test_preprocess_without_crop_keeps_the_cameras_framing():
    """crop=False: the 60 x 90 image is padded to 90 x 90 (15 white rows above and below) and
    resized to 90: the object stays where the camera put it, at its size."""
    out = prepare_condition_image(object_image(), size=90, crop=False)
    red = (out[0] > 0.6) & (out[1] < 0.4)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (15 + 10, 15 + 29)
    assert (cols.min().item(), cols.max().item()) == (20, 69)
    assert out[:, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_preprocess_same_for_rgba_rgb_and_mask():
    """Training (RGB on white + mask) and inference (RGBA, or plain RGB) give the same input."""
    rgb = object_image()
    mask = (rgb.min(-1) < 250).astype(np.uint8) * 255
    rgba = np.concatenate([rgb, mask[..., None]], -1)
    rgba_noisy = rgba.copy()
    rgba_noisy[mask == 0, :3] = 17  # background colour under alpha 0 must not matter
    a = prepare_condition_image(Image.fromarray(rgba_noisy), size=64)
    b = prepare_condition_image(rgb, size=64, mask=mask > 0)
    c = prepare_condition_image(rgb, size=64)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b, c)


def test_preprocess_errors():
    with pytest.raises(ValueError, match="no object"):
        prepare_condition_image(np.full((8, 8, 3), 255, np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        prepare_condition_image(np.zeros((8, 8), np.uint8))


@pytest.fixture
def tiny_dinov2(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(tmp_path)
    transformers.BitImageProcessor(
        size={"shortest_edge": 56},
        crop_size={"height": 56, "width": 56},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(tmp_path)
    return tmp_path


def test_dinov2_from_saved_folder(tiny_dinov2):
    from transformers import Dinov2Model

    conditioner = build_conditioner(
        ConditionerConfig(kind="dinov2", model=str(tiny_dinov2), image_size=None), context_in_dim=32
    ).train()
    assert conditioner.out_dim == 32 and conditioner.n_tokens == 1 + 4 * 4
    assert not any(p.requires_grad for p in conditioner.encoder.parameters())
    assert not conditioner.encoder.model.training  # frozen even in train mode

    images = torch.rand(2, 3, 56, 56)
    conditioner.eval()
    tokens = conditioner(images)
    assert tokens.shape == (2, 17, 32)
    # independent path: normalise by hand (56 px input: resize and crop are the identity)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    reference = Dinov2Model.from_pretrained(tiny_dinov2).eval()
    with torch.no_grad():
        expected = reference(pixel_values=(images - mean) / std).last_hidden_state
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(conditioner.null(3), torch.zeros(3, 17, 32))


def test_dinov2_preprocessing_matches_its_image_processor(tiny_dinov2):
    """Our torch path vs the saved processor itself on a uint8 image of another size."""
    from transformers import AutoImageProcessor

    conditioner = build_conditioner(
        ConditionerConfig(kind="dinov2", model=str(tiny_dinov2), image_size=None)
    )
    rows, cols = np.mgrid[0:70, 0:84]
    image = np.stack([rows * 3, cols * 3, rows + cols], -1).clip(0, 255).astype(np.uint8)
    expected = AutoImageProcessor.from_pretrained(tiny_dinov2)(image, return_tensors="pt")
    ours = conditioner.encoder.pixels(torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0)
    assert ours.shape == expected.pixel_values.shape == (1, 3, 56, 56)
    # PIL resamples in 8 bits: agreement to a few grey levels (one level is 1/255/0.225 = 0.017)
    assert (ours - expected.pixel_values).abs().max() < 0.05


def test_dinov2_errors(tiny_dinov2, tmp_path):
    with pytest.raises(ValueError, match="context_in_dim 64"):
        build_conditioner(ConditionerConfig(kind="dinov2", model=str(tiny_dinov2)), 64)
    with pytest.raises(ValueError, match="cannot load DINOv2"):
        build_conditioner(ConditionerConfig(kind="dinov2", model=str(tmp_path / "missing")))


def test_patch_encoder_trains_and_drops_condition():
    config = ConditionerConfig(
        image_size=32, patch_size=8, width=16, depth=1, num_heads=2, drop_prob=0.5, null="learned"
    )
    conditioner = build_conditioner(config, context_in_dim=16).train()
    images = torch.rand(64, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    tokens = conditioner(images, generator=g)
    assert tokens.shape == (64, 17, 16)
    dropped = (tokens == conditioner.null_tokens).flatten(1).all(1)
    assert 16 < dropped.sum() < 48  # about half with p = 0.5
    tokens.sum().backward()
    assert conditioner.encoder.patch_embed.weight.grad.abs().sum() > 0
    assert conditioner.null_tokens.grad.abs().sum() > 0  # learned null
    assert not (conditioner.eval()(images) == conditioner.null_tokens).flatten(1).all(1).any()


def test_drop_condition_probability():
    tokens, null = torch.ones(10_000, 2, 3), torch.zeros(2, 3)
    out = drop_condition(tokens, null, 0.1, torch.Generator().manual_seed(0))
    assert abs((out[:, 0, 0] == 0).float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_condition(tokens, null, 0.0), tokens)
