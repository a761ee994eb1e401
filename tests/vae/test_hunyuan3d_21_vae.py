"""Hunyuan3D-2.1's VAE: its released layout loads strictly into ``VecSetVAE`` and encodes and
decodes as its reference code does (fixture made by tests/fixtures/make_hy21_vae_fixture.py from
hy3dshape on small random weights); the packaged released configs; the encoder's input."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vilearn.vae import load_vae, preset
from vilearn.vae.fps import gather_points
from vilearn.vae.input import EncoderInput, InputError, build_input

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hy21-vae"


@pytest.fixture(scope="module")
def reference():
    return load_vae(FIXTURE), load_file(str(FIXTURE / "io.safetensors"))


@pytest.mark.parametrize("case", ["mixed", "uniform"])
def test_encoder_and_decoder_match_hy3dshape(reference, case):
    vae, io = reference
    assert vae.config.point_feats == 4 and vae.config.with_encoder
    surface, anchor_index = io[f"{case}.surface"], io[f"{case}.anchor_index"]
    with torch.no_grad():
        moments = vae.pre_kl(vae.encoder(surface, gather_points(surface, anchor_index)))
        expected = io[f"{case}.moments"]
        assert moments.shape == expected.shape == (2, 32, 16)
        assert (moments - expected).abs().max() < 1e-4 * expected.abs().max()
        logits = vae.query(io[f"{case}.queries"], vae.decode(moments[..., :8]))
    assert (logits - io[f"{case}.logits"]).abs().max() < 1e-4 * io[f"{case}.logits"].abs().max()
    assert io[f"{case}.logits"].std() > 0.1  # a real signal


@pytest.mark.parametrize("case,fraction", [("mixed", 0.5), ("uniform", 0.0)])
def test_token_split_and_order_follow_hy3dshape(reference, case, fraction):
    """Our input for N tokens splits and orders them as hy3dshape did: uniform tokens first."""
    vae, io = reference
    sharp_tokens = int(io[f"{case}.sharp_tokens"])
    spec = EncoderInput.of(vae.config, sharp_fraction=fraction)
    assert spec.tokens(32) == (32 - sharp_tokens, sharp_tokens)
    is_sharp = io[f"{case}.surface"][..., 6] > 0.5
    reference_order = torch.gather(is_sharp, 1, io[f"{case}.anchor_index"])  # (B, N)
    rng = np.random.default_rng(0)
    surface = {"points": rng.random((700, 3), dtype=np.float32),
               "normals": rng.random((700, 3), dtype=np.float32),
               "sharp_points": rng.random((400, 3), dtype=np.float32),
               "sharp_normals": rng.random((400, 3), dtype=np.float32)}
    points, anchors = build_input(surface, 32, spec, rng)
    assert points.shape == (640, 7)  # 20 points per token
    assert torch.equal(torch.from_numpy(points[anchors, 6] > 0.5), reference_order[0])


def test_the_released_vae_configs_are_packaged():
    v21 = preset("hunyuan3d-vae-v2-1")
    assert (v21.num_latents, v21.embed_dim, v21.num_encoder_layers, v21.point_feats) == (4096, 64, 8, 4)
    assert not v21.qkv_bias and v21.qk_norm and not v21.include_pi
    spec = EncoderInput.of(v21)
    assert spec.points(4096) == (81920, 0) and spec.point_feats == 4
    v20 = preset("hunyuan3d-vae-v2-0-withencoder")
    decoder = preset("hunyuan3d-vae-v2-0")
    for key in ("embed_dim", "width", "heads", "num_decoder_layers", "num_freqs", "include_pi",
                "qkv_bias", "qk_norm", "scale_factor"):
        assert getattr(v20, key) == getattr(decoder, key), key
    assert v20.num_encoder_layers == 8 and v20.point_feats == 4
    assert EncoderInput.of(v20).points(3072) == (30720, 30720)  # Hunyuan3D-2's VAE demo


def surface_of(uniform: int, sharp: int | None):
    rng = np.random.default_rng(0)
    arrays = {"points": rng.random((uniform, 3), dtype=np.float32),
              "normals": rng.random((uniform, 3), dtype=np.float32)}
    if sharp is not None:
        arrays.update(sharp_points=rng.random((sharp, 3), dtype=np.float32),
                      sharp_normals=rng.random((sharp, 3), dtype=np.float32))
    return arrays


def test_an_input_the_samples_cannot_make_is_refused():
    spec = EncoderInput.of(preset("hunyuan3d-vae-v2-0-withencoder"))
    with pytest.raises(InputError, match="no sharp-edge samples stored .* 20 points per token, 50%"):
        build_input(surface_of(2000, None), 64, spec, np.random.default_rng(0), "old")
    with pytest.raises(InputError, match="2000 uniform and 100 sharp-edge samples stored, fewer than "
                                         "the 640 \\+ 640 that 64 tokens read"):
        build_input(surface_of(2000, 100), 64, spec, np.random.default_rng(0))
    # a smooth shape (no sharp edge at all) reads uniform points for every token
    points, anchors = build_input(surface_of(2000, 0), 64, spec, np.random.default_rng(0))
    assert points.shape == (1280, 7) and not points[:, 6].any() and len(anchors) == 64


def test_our_vaes_keep_reading_all_given_points():
    """downsample_ratio 0: every stored point up to the count, tokens = FPS prefixes."""
    spec = EncoderInput.of(replace(preset("tiny"), point_feats=3), all_points=500)
    surface = surface_of(800, 50)
    points, anchors = build_input(surface, 64, spec, np.random.default_rng(0))
    _, fewer = build_input(surface, 16, spec, np.random.default_rng(0))
    assert points.shape == (500, 6) and np.array_equal(fewer, anchors[:16])
