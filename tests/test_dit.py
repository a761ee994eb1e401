"""MM-DiT: equivalence with hy3dgen's Hunyuan3DDiT, VAPE placement and maths, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hy3dgen_ref import hunyuan3ddit
from vape_ref import permuted_outputs, random_visible, rotation_matrix
from vilearn.config import ConfigError
from vilearn.dit import (
    VAPE,
    MMDiT,
    count_parameters,
    dit_config,
    fixed_partition,
    mask_from_indices,
)

SMALL = dict(
    in_channels=8, context_in_dim=16, hidden_size=64, num_heads=4, depth=2, depth_single_blocks=2
)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero everything (adaLN-zero init would hide most of the maths)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g)
                * (0.3 if p.dim() < 2 else 1 / math.sqrt(p.shape[-1]))
            )
    return model


def inputs(batch=2, n=12, n_cond=5, channels=8, context=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, n, channels, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, n_cond, context, generator=g),
    )


@pytest.mark.hy3dgen
@pytest.mark.parametrize("guidance_embed", [False, True])
def test_matches_hy3dgen_hunyuan3ddit(guidance_embed):
    ref_module = hunyuan3ddit()
    torch.manual_seed(0)
    ref = ref_module.Hunyuan3DDiT(**SMALL, axes_dim=[16], guidance_embed=guidance_embed).eval()
    ours = MMDiT(dit_config("tiny", **SMALL, guidance_embed=guidance_embed)).eval()
    assert set(ref.state_dict()) == set(ours.state_dict())
    assert ours.load_hunyuan3d_state_dict(ref.state_dict()) == []

    x, t, cond = inputs()
    guidance = torch.tensor([3.0, 7.5])
    with torch.no_grad():
        expected = ref(x, t, {"main": cond}, guidance=guidance)
        got = ours(x, t, cond, guidance=guidance if guidance_embed else None)
    assert got.shape == (2, 12, 8)
    assert (got - expected).abs().max().item() < 1e-5
    assert expected.abs().mean() > 0.1  # a real signal, not two zeros


def test_loads_checkpoint_layouts_and_reports_vape_params():
    donor = randomize(MMDiT(dit_config("tiny", **SMALL)))
    state = donor.state_dict()
    lpe = MMDiT(dit_config("tiny", **SMALL, vape="va-lpe"))
    left = lpe.load_hunyuan3d_state_dict({"model": state})
    assert sorted(left) == ["vape.invisible_embed", "vape.visible_embed"]
    plain = MMDiT(dit_config("tiny", **SMALL))
    plain.load_hunyuan3d_state_dict(
        {f"model.{k}": v for k, v in state.items()} | {"vae.x": torch.ones(1)}
    )
    assert torch.equal(plain.latent_in.weight, donor.latent_in.weight)
    wrong = MMDiT(dit_config("tiny", **{**SMALL, "depth": 1}))
    with pytest.raises(ValueError, match="unexpected"):
        wrong.load_hunyuan3d_state_dict(state)


def twin(vape: str, **extra) -> tuple[MMDiT, MMDiT]:
    """A `none` model and a `vape` model with identical backbone weights."""
    base = randomize(MMDiT(dit_config("tiny", **SMALL))).eval()
    other = MMDiT(dit_config("tiny", **SMALL, vape=vape, **extra)).eval()
    other.load_hunyuan3d_state_dict(base.state_dict())
    return base, other


@pytest.mark.parametrize("m", [0.0, 7.0])
def test_va_rope_all_visible_equals_none(m):
    base, varope = twin("va-rope", vape_m=m)
    x, t, cond = inputs()
    all_visible = torch.ones(2, 12, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(varope(x, t, cond, visible=all_visible), base(x, t, cond), atol=1e-6)
        # and it does act when some tokens are invisible
        diff = varope(x, t, cond, visible=random_visible(2, 12)) - base(x, t, cond)
    assert diff.abs().max() > 1e-2


@pytest.mark.parametrize("vape", ["none", "va-rope", "va-lpe"])
def test_permuting_tokens_with_mask_permutes_output(vape):
    _, model = twin(vape)
    if vape == "va-lpe":
        randomize(model.vape, seed=5)
    x, t, cond = inputs()
    out_perm, perm_out = permuted_outputs(model, x, t, cond, random_visible(2, 12))
    assert torch.allclose(out_perm, perm_out, atol=1e-5)


def test_sequential_rope_depends_on_order():
    """The permutation test above can see order dependence: plain `rope` has it."""
    _, model = twin("rope")
    out_perm, perm_out = permuted_outputs(model, *inputs())
    assert (out_perm - perm_out).abs().max() > 1e-3


def qk_streams(n_cond=4, n=9, dim=16, seed=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, length, dim, generator=g) for length in (n_cond, n_cond, n, n)]


def joint_logits(cq, ck, sq, sk) -> np.ndarray:
    q, k = torch.cat((cq, sq), 2).double(), torch.cat((ck, sk), 2).double()
    return (q @ k.transpose(-1, -2)).numpy() / math.sqrt(q.shape[-1])


@pytest.mark.parametrize("m,n", [(0.0, 50.0), (3.0, 50.0), (0.0, 5.0)])
def test_va_rope_logits_match_direct_rotation(m, n):
    dim, n_cond, n_shape = 16, 4, 9
    vape = VAPE(dit_config("tiny", hidden_size=64, num_heads=4, vape="va-rope", vape_m=m, vape_n=n))
    visible = random_visible(2, n_shape)
    streams = qk_streams(n_cond, n_shape, dim)
    got = joint_logits(*vape(visible, n_cond, n_shape)[0](*streams))
    raw = joint_logits(*streams)

    # direct: image tokens and VST rotated by R_m, IST by R_n, then q.k / sqrt(d)
    q = torch.cat((streams[0], streams[2]), 2).double().numpy()
    k = torch.cat((streams[1], streams[3]), 2).double().numpy()
    vis = torch.cat((torch.ones(2, n_cond, dtype=torch.bool), visible), 1).numpy()
    rot = {True: rotation_matrix(m, dim), False: rotation_matrix(n, dim)}
    for b in range(2):
        for i in range(n_cond + n_shape):
            q[b, :, i] = q[b, :, i] @ rot[bool(vis[b, i])].T
            k[b, :, i] = k[b, :, i] @ rot[bool(vis[b, i])].T
    expected = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim)
    np.testing.assert_allclose(got, expected, atol=1e-4)

    same = vis[:, None, :, None] == vis[:, None, None, :]  # (B, 1, L, L)
    same = np.broadcast_to(same, raw.shape)
    np.testing.assert_allclose(got[same], raw[same], atol=1e-4)  # same category: unchanged
    assert np.abs(got[~same] - raw[~same]).max() > 0.1  # cross category: rotated


def test_sequential_rope_logits_match_direct_rotation():
    dim, n_cond, n_shape = 16, 4, 9
    vape = VAPE(dit_config("tiny", hidden_size=64, num_heads=4, vape="rope"))
    streams = qk_streams(n_cond, n_shape, dim)
    got = joint_logits(*vape(None, n_cond, n_shape)[0](*streams))
    q = torch.cat((streams[0], streams[2]), 2).double().numpy()
    k = torch.cat((streams[1], streams[3]), 2).double().numpy()
    for i in range(n_cond + n_shape):
        q[:, :, i] = q[:, :, i] @ rotation_matrix(i, dim).T
        k[:, :, i] = k[:, :, i] @ rotation_matrix(i, dim).T
    np.testing.assert_allclose(got, q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim), atol=1e-4)


def test_va_lpe_adds_category_embeddings():
    dim, n_cond, n_shape = 16, 4, 9
    vape = VAPE(dit_config("tiny", hidden_size=64, num_heads=4, depth=2, vape="va-lpe"))
    visible = random_visible(2, n_shape)
    streams = qk_streams(n_cond, n_shape, dim)
    pes = vape(visible, n_cond, n_shape)
    assert len(pes) == 2
    e_v, e_i = vape.visible_embed[1].detach(), vape.invisible_embed[1].detach()
    assert not torch.allclose(e_v, e_i)
    # each of the four inputs, against the formula written out per token
    per_token = torch.stack([e_v if bool(v) else e_i for v in visible.flatten()]).view(2, 1, n_shape, dim)
    with torch.no_grad():
        cq, ck, sq, sk = pes[1](*streams)
    torch.testing.assert_close(cq, streams[0] + e_v)
    torch.testing.assert_close(ck, streams[1] + e_v)
    torch.testing.assert_close(sq, streams[2] + per_token)
    torch.testing.assert_close(sk, streams[3] + per_token)


def test_va_lpe_reaches_the_output_through_a_non_zero_final_layer():
    """End to end with every weight random (the final layer included): zero embeddings give the
    `none` model exactly, and each of e_v and e_i then moves the prediction."""
    base, lpe = twin("va-lpe")
    x, t, cond = inputs()
    visible = random_visible(2, 12)
    assert lpe.final_layer.linear.weight.abs().sum() > 0
    with torch.no_grad():
        lpe.vape.visible_embed.zero_()
        lpe.vape.invisible_embed.zero_()
        torch.testing.assert_close(lpe(x, t, cond, visible=visible), base(x, t, cond))
        reference = base(x, t, cond)
        for name in ("visible_embed", "invisible_embed"):
            getattr(lpe.vape, name).normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
            moved = (lpe(x, t, cond, visible=visible) - reference).abs().max()
            assert moved > 1e-2, name
            getattr(lpe.vape, name).zero_()


def test_vape_needs_a_visibility_mask():
    _, model = twin("va-rope")
    x, t, cond = inputs()
    with pytest.raises(ValueError, match="fixed_partition"):
        model(x, t, cond)
    with pytest.raises(ValueError, match=r"\(B, 12\) bool"):
        model(x, t, cond, visible=torch.ones(2, 11, dtype=torch.bool))


def test_fixed_partition_first_third():
    assert fixed_partition(2048).sum() == 683  # the paper: tokens 1-683 visible
    assert fixed_partition(2048)[0, :683].all() and not fixed_partition(2048)[0, 683:].any()
    assert fixed_partition(300).sum() == 100
    assert fixed_partition(3, batch=4).shape == (4, 3)
    assert fixed_partition(10, ratio=0.0).sum() == 0
    with pytest.raises(ValueError, match="ratio"):
        fixed_partition(10, ratio=1.5)


def test_mask_from_indices():
    mask = mask_from_indices([torch.tensor([0, 3]), torch.tensor([], dtype=torch.long)], 5)
    assert mask.tolist() == [[True, False, False, True, False], [False] * 5]
    with pytest.raises(ValueError, match="sample 0"):
        mask_from_indices([torch.tensor([5])], 5)


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="hidden_sise"):
        dit_config("tiny", hidden_sise=32)
    with pytest.raises(ConfigError, match="vape"):
        dit_config("tiny", vape="va_rope")
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        dit_config("tiny", hidden_size=60, num_heads=8)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dit_config("huge")
    model = MMDiT(dit_config("tiny"))
    with pytest.raises(ValueError, match=r"x must be \(B, N, 8\)"):
        model(torch.zeros(1, 4, 7), torch.zeros(1), torch.zeros(1, 3, 64))


def test_initialisation_predicts_zero_and_trains():
    model = MMDiT(dit_config("tiny"))
    x, t, cond = inputs(channels=8, context=64)
    out = model(x, t, cond)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def expected_parameters(c) -> int:
    """Independent count from the architecture's formula (hidden h, MLP width f, head dim d)."""
    h, f, d = c.hidden_size, int(c.hidden_size * c.mlp_ratio), c.head_dim
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    stream = lin(h, 6 * h) + lin(h, 3 * h, c.qkv_bias) + 2 * d + lin(h, h) + lin(h, f) + lin(f, h)
    single = lin(h, 3 * h + f) + lin(h + f, h) + 2 * d + lin(h, 3 * h)
    embed = lin(c.in_channels, h) + lin(256, h) + lin(h, h) + lin(c.context_in_dim, h)
    final = lin(h, 2 * h) + lin(h, c.in_channels)
    return embed + c.depth * 2 * stream + c.depth_single_blocks * single + final


@pytest.mark.parametrize(
    "preset,low,high", [("paper-0.39b", 0.38e9, 0.40e9), ("hunyuan3d-2", 1.05e9, 1.15e9)]
)
@pytest.mark.parametrize("vape", ["none", "va-lpe"])
def test_large_presets_on_meta_device(preset, low, high, vape):
    config = dit_config(preset, vape=vape)
    with torch.device("meta"):
        model = MMDiT(config, init=False)
    count = count_parameters(model)
    extra = 2 * config.depth * config.head_dim if vape == "va-lpe" else 0
    print(f"{preset} vape={vape}: {count:,} parameters")
    assert count == expected_parameters(config) + extra
    assert low < count < high


def test_gradient_checkpointing_gives_the_same_gradients():
    _, model = twin("va-rope")
    model.train()
    x, t, cond = inputs()
    visible = random_visible(2, 12)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, t, cond, visible=visible).square().mean().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0], grads[1])
