"""The VecSet VAE model: hy3dgen equivalence, permutation invariance, FPS determinism."""

from __future__ import annotations

import math

import pytest
import torch

from vilearn.vae import VAEConfig, VecSetVAE, fps_indices
from vilearn.vae.loading import load_vae, save_vae

SMALL = dict(embed_dim=8, width=32, heads=4, num_decoder_layers=2, num_latents=64, num_freqs=4)


def sphere_surface(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 6) points and outward normals on a sphere of radius 0.5."""
    g = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return torch.cat([0.5 * normals, normals], dim=-1)


@pytest.mark.hy3dgen
@pytest.mark.parametrize("variant", [
    dict(include_pi=True, qkv_bias=True, qk_norm=False),
    dict(include_pi=False, qkv_bias=False, qk_norm=True),  # the hunyuan3d-vae-v2-0 flags
    dict(include_pi=False, qkv_bias=False, qk_norm=True, geo_decoder_downsample_ratio=2),
])
def test_decoder_matches_hy3dgen_shapevae(hy3dgen_ae, variant):
    torch.manual_seed(0)
    params = {**SMALL, **variant}
    theirs = hy3dgen_ae.ShapeVAE(**params).eval()
    # Random (not default) weights everywhere so that LayerNorm affine terms matter too.
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.3)
    ours = VecSetVAE(VAEConfig(**params, with_encoder=False)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)

    latents = torch.randn(2, 64, 8)
    queries = torch.rand(2, 500, 3) * 2.2 - 1.1
    with torch.no_grad():
        expected = theirs.geo_decoder(queries=queries, latents=theirs(latents))[..., 0]
        got = ours.query(queries, ours.decode(latents))
    assert (got - expected).abs().max().item() < 1e-5
    assert expected.std() > 0.1  # a non-trivial function was compared


def test_decoder_is_permutation_invariant():
    torch.manual_seed(1)
    model = VecSetVAE(VAEConfig(**SMALL)).eval()
    latents = torch.randn(1, 64, 8)
    perm = torch.randperm(64)
    queries = torch.rand(1, 300, 3) * 2 - 1
    with torch.no_grad():
        a = model.query(queries, model.decode(latents))
        b = model.query(queries, model.decode(latents[:, perm]))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(latents, latents[:, perm])


def test_fps_is_deterministic_and_nested():
    surface = sphere_surface(2000)
    first = fps_indices(surface[:, :3], 128)
    again = fps_indices(surface[:, :3].clone(), 128)
    assert torch.equal(first, again)
    assert first.unique().numel() == 128 and first[0] == 0
    # Greedy FPS: the 32-token picks are the first 32 of the 128-token picks.
    assert torch.equal(fps_indices(surface[:, :3], 32), first[:32])
    # Spread: the minimum pairwise distance among picks beats random picks by a wide margin.
    picks = surface[first, :3]
    random = surface[torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:128], :3]
    min_dist = lambda p: (torch.cdist(p, p) + 10 * torch.eye(len(p))).min()  # noqa: E731
    assert min_dist(picks) > 2 * min_dist(random)


def test_encode_twice_gives_identical_tokens():
    torch.manual_seed(2)
    model = VecSetVAE(VAEConfig(**SMALL, num_encoder_layers=1)).eval()
    surface = sphere_surface(1024)[None]
    with torch.no_grad():
        a, b = model.encode(surface, 64), model.encode(surface.clone(), 64)
    assert torch.equal(a.anchor_index, b.anchor_index)
    assert torch.equal(a.posterior.mean, b.posterior.mean)
    assert torch.equal(a.posterior.logvar, b.posterior.logvar)
    assert torch.allclose(a.anchors, surface[0, a.anchor_index[0], :3][None])


def test_one_set_of_weights_serves_any_token_count():
    torch.manual_seed(3)
    model = VecSetVAE(VAEConfig(**SMALL)).eval()
    surface = sphere_surface(1024)[None]
    queries = torch.rand(1, 50, 3) * 2 - 1
    with torch.no_grad():
        for n in (16, 64, 200):
            enc = model.encode(surface, n)
            assert enc.posterior.mean.shape == (1, n, 8)
            assert model.query(queries, model.decode(enc.posterior.mean)).shape == (1, 50)


def test_grouping_paths_reproduce_the_decoder_attention():
    """attention_queries/keys are the q and k the decoder's cross-attention really uses."""
    torch.manual_seed(4)
    model = VecSetVAE(VAEConfig(**SMALL, qk_norm=True, include_pi=False)).eval()
    tokens = model.decode(torch.randn(1, 64, 8))
    points = torch.rand(1, 40, 3) * 2 - 1
    captured = {}
    attn = model.geo_decoder.cross_attn_decoder.attn
    handle = attn.attention.register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.no_grad():
        model.query(points, tokens)
        q = model.geo_decoder.attention_queries(points)
        k = model.geo_decoder.attention_keys(tokens)
        _, v = attn.attention.split_kv(attn.c_kv(model.geo_decoder.cross_attn_decoder.ln_2(tokens)))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        manual = (weights @ v).transpose(1, 2).reshape(1, 40, -1)
        probs = model.geo_decoder.attention_probs(points, tokens)
    handle.remove()
    assert torch.allclose(manual, captured["out"], atol=1e-5)
    assert probs.shape == (1, 40, 64)
    assert torch.allclose(probs.sum(-1), torch.ones(1, 40), atol=1e-5)


def test_key_mask_equals_decoding_from_the_token_subset():
    torch.manual_seed(5)
    model = VecSetVAE(VAEConfig(**SMALL)).eval()
    tokens = model.decode(torch.randn(1, 64, 8))
    keep = torch.zeros(1, 64, dtype=torch.bool)
    keep[0, ::3] = True
    queries = torch.rand(1, 100, 3) * 2 - 1
    with torch.no_grad():
        masked = model.query(queries, tokens, key_mask=keep)
        subset = model.query(queries, tokens[:, keep[0]])
    assert torch.allclose(masked, subset, atol=1e-5)


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(6)
    model = VecSetVAE(VAEConfig(**SMALL, num_encoder_layers=1))
    save_vae(tmp_path / "vae", model)
    loaded = load_vae(tmp_path / "vae")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # The .safetensors file alone carries its config in its metadata.
    (tmp_path / "vae" / "config.json").unlink()
    assert load_vae(tmp_path / "vae" / "model.safetensors").config == model.config


@pytest.mark.hy3dgen
@pytest.mark.parametrize("layout", ["model.fp16.safetensors", "model.ckpt"])
def test_loads_hy3dgen_layout(hy3dgen_ae, tmp_path, layout):
    """A hunyuan3d-vae-v2-0 style folder (weights + config.yaml, target/params) loads strictly."""
    import yaml
    from safetensors.torch import save_file

    params = {**SMALL, "include_pi": False, "qkv_bias": False, "qk_norm": True,
              "scale_factor": 0.99, "drop_path_rate": 0.0}
    torch.manual_seed(7)
    theirs = hy3dgen_ae.ShapeVAE(**params).eval()
    folder = tmp_path / "hunyuan3d-vae-v2-0"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": params}))
    state = theirs.state_dict()
    if layout.endswith(".safetensors"):
        save_file({k: v.half().contiguous() for k, v in state.items()}, str(folder / layout))
    else:
        torch.save(state, folder / layout)
    ours = load_vae(folder)
    assert not ours.config.with_encoder and ours.config.scale_factor == 0.99
    latents = torch.randn(1, 64, 8)
    queries = torch.rand(1, 200, 3) * 2 - 1
    with torch.no_grad():
        expected = theirs.geo_decoder(queries=queries, latents=theirs(latents))[..., 0]
        got = ours.query(queries, ours.decode(latents))
    tol = 1e-5 if layout.endswith(".ckpt") else 5e-2  # fp16 rounding of the weights
    assert (got - expected).abs().max().item() < tol


def test_bad_config_key_is_named(tmp_path):
    from vilearn.config import ConfigError

    model = VecSetVAE(VAEConfig(**SMALL))
    save_vae(tmp_path, model)
    (tmp_path / "model.safetensors").unlink()
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))  # no metadata
    (tmp_path / "config.json").write_text('{"width": 32, "hedas": 4}')
    with pytest.raises(ConfigError, match="hedas"):
        load_vae(tmp_path)


@pytest.mark.hy3dgen
def test_hunyuan3d_vae_v2_0_preset_has_the_checkpoint_parameter_set(hy3dgen_ae):
    """Same names and shapes as hy3dgen's ShapeVAE with hunyuan3d-vae-v2-0's params (on meta)."""
    from dataclasses import asdict

    from vilearn.vae import preset

    config = preset("hunyuan3d-vae-v2-0")
    params = {k: v for k, v in asdict(config).items()
              if k in ("num_latents", "embed_dim", "width", "heads", "num_decoder_layers",
                       "num_freqs", "include_pi", "qkv_bias", "qk_norm", "scale_factor")}
    with torch.device("meta"):
        theirs = hy3dgen_ae.ShapeVAE(**params).state_dict()
        ours = VecSetVAE(config).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
