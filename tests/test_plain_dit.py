"""Cross-attention DiT (Hunyuan3D-2.1's HunYuanDiTPlain): equality with the reference on a saved
fixture, MoE and its auxiliary loss, VAPE in self- and cross-attention, presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import vilearn.dit.plain as plain_module
from vape_ref import permuted_outputs, random_visible, rotation_matrix
from vilearn.config import ConfigError
from vilearn.dit import (
    PlainDiT,
    count_parameters,
    denoiser_config,
    fixed_partition,
    plain_dit_config,
)
from vilearn.dit.moe import MoEBlock

FIXTURE = Path(__file__).parent / "fixtures" / "plain_dit.safetensors"
SMALL = dict(in_channels=8, context_dim=16, hidden_size=32, num_heads=4, depth=5,
             num_moe_layers=2, num_experts=4, moe_top_k=2)


def read_fixture():
    with safe_open(str(FIXTURE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def reference_model() -> tuple[PlainDiT, dict]:
    tensors, meta = read_fixture()
    config = plain_dit_config("tiny", **json.loads(meta["config"]))
    model = PlainDiT(config)
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    assert set(weights) == set(model.state_dict())  # the reference's names, one to one
    assert model.load_hunyuan3d_state_dict({"model": weights}) == []
    return model, tensors


def test_eval_matches_hunyuan3d_2_1_reference():
    model, ref = reference_model()
    with torch.no_grad():
        out = model.eval()(ref["x"], ref["t"], ref["cond"])
    assert out.shape == ref["eval"].shape
    torch.testing.assert_close(out, ref["eval"], atol=2e-5, rtol=1e-5)
    assert ref["eval"].abs().mean() > 0.3  # a real signal
    assert model.aux_loss is None  # nothing of the load balancing at inference


def test_train_matches_reference_with_aux_loss_and_its_gradient():
    model, ref = reference_model()
    model.train()
    out = model(ref["x"], ref["t"], ref["cond"])
    torch.testing.assert_close(out.detach(), ref["train"], atol=2e-5, rtol=1e-5)
    # the reference's alpha = 0.01 is our default moe_aux_weight
    torch.testing.assert_close(model.aux_loss.detach(), ref["aux"], atol=1e-6, rtol=1e-5)
    probe = (out * ref["probe"]).sum()
    gate = model.blocks[4].moe.gate.weight
    without_aux = torch.autograd.grad(probe, gate, retain_graph=True)[0]
    (probe + model.aux_loss).backward()
    params = dict(model.named_parameters())
    for key in [k for k in ref if k.startswith("grads.")]:
        torch.testing.assert_close(params[key[len("grads."):]].grad, ref[key], atol=2e-5, rtol=1e-4)
    # the aux loss's gradient is really part of the reference's (the check above can fail)
    assert (without_aux - ref["grads.blocks.4.moe.gate.weight"]).abs().max() > 1e-4


def test_moe_routes_top_k_with_shared_expert():
    """Against a direct per-token loop: y = shared(x) + sum over top-k of score * expert(x)."""
    torch.manual_seed(0)
    moe = MoEBlock(8, num_experts=4, top_k=2, inner=16).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        out, aux = moe(x)
        expected = torch.empty_like(x)
        for b in range(2):
            for i in range(5):
                token = x[b, i]
                scores = torch.softmax(moe.gate.weight @ token, -1)
                top = scores.argsort(descending=True)[:2]
                routed = sum(scores[e] * moe.experts[e](token) for e in top.tolist())
                expected[b, i] = moe.shared_experts(token) + routed
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert aux is None
    moe.train()
    _, aux = moe(x)
    assert aux is not None and aux > 0
    # an expert that gets no token still takes part in training's graph (DDP needs every grad)
    with torch.no_grad():
        moe.gate.weight[3] = -100.0
    out, aux = moe(x)
    (out.sum() + aux).backward()
    assert moe.experts[3].net[2].weight.grad is not None


def twin(vape: str, **extra) -> tuple[PlainDiT, PlainDiT]:
    """A `none` model and a `vape` model with identical random backbone weights."""
    g = torch.Generator().manual_seed(0)
    base = PlainDiT(plain_dit_config("tiny", **SMALL)).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            gain = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(gain + torch.randn(p.shape, generator=g) * (0.3 if p.dim() < 2 else p.shape[-1] ** -0.5))
    other = PlainDiT(plain_dit_config("tiny", **SMALL, vape=vape, **extra)).eval()
    other.load_hunyuan3d_state_dict(base.state_dict())
    if vape == "va-lpe":
        with torch.no_grad():
            other.vape.visible_embed.normal_(generator=g)
            other.vape.invisible_embed.normal_(generator=g)
    return base, other


def inputs(batch=2, n=12, n_cond=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, SMALL["in_channels"], generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, n_cond, SMALL["context_dim"], generator=g))


@pytest.mark.parametrize("m", [0.0, 7.0])
def test_va_rope_all_visible_equals_none(m):
    base, varope = twin("va-rope", vape_m=m)
    x, t, cond = inputs()
    with torch.no_grad():
        torch.testing.assert_close(varope(x, t, cond, visible=torch.ones(2, 12, dtype=torch.bool)),
                                   base(x, t, cond), atol=1e-5, rtol=1e-5)
        diff = varope(x, t, cond, visible=random_visible(2, 12)) - base(x, t, cond)
    assert diff.abs().max() > 1e-2


@pytest.mark.parametrize("vape", ["none", "va-rope", "va-lpe"])
def test_permuting_tokens_with_mask_permutes_output(vape):
    _, model = twin(vape)
    out_perm, perm_out = permuted_outputs(model, *inputs(), random_visible(2, 12))
    torch.testing.assert_close(out_perm, perm_out, atol=1e-5, rtol=1e-5)


def test_sequential_rope_depends_on_order():
    _, model = twin("rope")
    out_perm, perm_out = permuted_outputs(model, *inputs())
    assert (out_perm - perm_out).abs().max() > 1e-3


def capture_attention(model: PlainDiT, monkeypatch, *args, **kwargs) -> list[dict]:
    """Per attention call, in order (block 0 self, block 0 cross, block 1 self, ...): the normed
    Q/K before VAPE (q_norm / k_norm outputs) and the Q/K that reach the attention."""
    calls: list[dict] = []
    hooks = []
    for block in model.blocks:
        for attn in (block.attn1, block.attn2):
            hooks.append(attn.q_norm.register_forward_hook(
                lambda _m, _i, out: calls.append({"q_raw": out.detach().double()})))
            hooks.append(attn.k_norm.register_forward_hook(
                lambda _m, _i, out: calls[-1].update(k_raw=out.detach().double())))
    real = plain_module.attention

    def recording(q, k, v):
        calls[-1].update(q=q.detach().double(), k=k.detach().double())
        return real(q, k, v)

    monkeypatch.setattr(plain_module, "attention", recording)
    with torch.no_grad():
        model(*args, **kwargs)
    for hook in hooks:
        hook.remove()
    assert len(calls) == 2 * model.config.depth
    return calls


def rotated(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D) with token l of batch b turned by R(positions[b, l]) (positions (B, L))."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            rotation = torch.from_numpy(rotation_matrix(float(positions[b, i]), x.shape[-1]))
            out[b, :, i] = x[b, :, i] @ rotation.T
    return out


def logits(q, k):
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


@pytest.mark.parametrize("m,n", [(0.0, 50.0), (3.0, 50.0)])
def test_va_rope_logits_match_direct_rotation_in_both_attentions(monkeypatch, m, n):
    _, model = twin("va-rope", vape_m=m, vape_n=n)
    x, t, cond = inputs()
    visible = random_visible(2, 12)
    calls = capture_attention(model, monkeypatch, x, t, cond, visible=visible)
    # [time token, shape tokens]: the time token and VST at m, IST at n; image keys at m
    shape_pos = torch.where(torch.cat((torch.ones(2, 1, dtype=torch.bool), visible), 1), m, n)
    image_pos = torch.full((2, cond.shape[1]), m)
    for layer, call in enumerate(calls):
        key_pos = shape_pos if layer % 2 == 0 else image_pos
        expected = logits(rotated(call["q_raw"], shape_pos), rotated(call["k_raw"], key_pos))
        torch.testing.assert_close(logits(call["q"], call["k"]), expected, atol=1e-4, rtol=1e-4)
    raw, got = logits(calls[1]["q_raw"], calls[1]["k_raw"]), logits(calls[1]["q"], calls[1]["k"])
    ist = ~torch.cat((torch.ones(2, 1, dtype=torch.bool), visible), 1)
    torch.testing.assert_close(got[~ist[:, None, :, None].expand_as(got)],
                               raw[~ist[:, None, :, None].expand_as(raw)])  # VST -> image: as is
    assert (got - raw).abs().max() > 0.1  # IST -> image: rotated


def test_sequential_rope_positions_in_both_attentions(monkeypatch):
    _, model = twin("rope")
    x, t, cond = inputs()
    calls = capture_attention(model, monkeypatch, x, t, cond)
    n_cond = cond.shape[1]
    shape_pos = (n_cond + torch.arange(13)).expand(2, -1)  # the time token at L_c, shapes after
    image_pos = torch.arange(n_cond).expand(2, -1)
    for layer, call in enumerate(calls):
        torch.testing.assert_close(call["q"], rotated(call["q_raw"], shape_pos), atol=1e-5, rtol=1e-5)
        key_pos = shape_pos if layer % 2 == 0 else image_pos
        torch.testing.assert_close(call["k"], rotated(call["k_raw"], key_pos), atol=1e-5, rtol=1e-5)


def test_va_lpe_adds_embeddings_to_every_query_and_key(monkeypatch):
    _, model = twin("va-lpe")
    x, t, cond = inputs()
    visible = random_visible(2, 12)
    calls = capture_attention(model, monkeypatch, x, t, cond, visible=visible)
    shape_visible = torch.cat((torch.ones(2, 1, dtype=torch.bool), visible), 1)[:, None, :, None]
    for layer, call in enumerate(calls):
        e_v = model.vape.visible_embed[layer].double()
        e_i = model.vape.invisible_embed[layer].double()
        e_shape = torch.where(shape_visible, e_v, e_i)
        torch.testing.assert_close(call["q"], call["q_raw"] + e_shape)
        torch.testing.assert_close(call["k"], call["k_raw"] + (e_shape if layer % 2 == 0 else e_v))


def test_va_lpe_embeddings_reach_the_output():
    """Every layer's e_v and e_i move the prediction (the output layer is non-zero here)."""
    _, model = twin("va-lpe")
    x, t, cond = inputs()
    out = model(x, t, cond, visible=random_visible(2, 12))
    out.square().sum().backward()
    for grad in (model.vape.visible_embed.grad, model.vape.invisible_embed.grad):
        assert (grad.abs().sum(-1) > 0).all()  # every one of the 2 * depth rows


def test_gradient_checkpointing_gives_the_same_gradients_and_aux():
    _, model = twin("va-rope")
    model.train()
    x, t, cond = inputs()
    visible = random_visible(2, 12)
    grads, auxes = [], []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        loss = model(x, t, cond, visible=visible).square().mean()
        auxes.append(model.aux_loss.detach())
        (loss + model.aux_loss).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(auxes[0], auxes[1])


def test_initialisation_predicts_zero():
    model = PlainDiT(plain_dit_config("tiny"))
    x = torch.randn(2, 6, 8)
    out = model(x, torch.rand(2), torch.randn(2, 5, 64))
    assert torch.equal(out, torch.zeros_like(out))


def expected_parameters(c) -> int:
    """Independent count from the architecture (width h, context width d_c, head dim d)."""
    h, d = c.hidden_size, c.head_dim
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    ffn = lin(h, 4 * h) + lin(4 * h, h)
    norms = 3 * 2 * h + (4 * d if c.qk_norm else 0)
    self_attn = 3 * lin(h, h, c.qkv_bias) + lin(h, h)
    cross_attn = lin(h, h, c.qkv_bias) + 2 * lin(c.context_dim, h, c.qkv_bias) + lin(h, h)
    attn = self_attn + cross_attn
    total = lin(c.in_channels, h) + lin(h, 4 * h) + lin(4 * h, h) + 2 * h + lin(h, c.in_channels)
    for layer in range(c.depth):
        moe = c.depth - layer <= c.num_moe_layers
        skip = lin(2 * h, h) + 2 * h if layer > c.depth // 2 else 0
        total += attn + norms + skip + ((c.num_experts + 1) * ffn + c.num_experts * h if moe else ffn)
    return total


@pytest.mark.parametrize("vape", ["none", "va-lpe"])
def test_released_preset_on_meta_device(vape):
    config = plain_dit_config("hunyuan3d-2.1", vape=vape)
    with torch.device("meta"):
        model = PlainDiT(config, init=False)
    count = count_parameters(model)
    extra = 2 * 2 * config.depth * config.head_dim if vape == "va-lpe" else 0
    print(f"hunyuan3d-2.1 vape={vape}: {count:,} parameters")
    assert count == expected_parameters(config) + extra
    # 3.05B: the denoiser of hy3dshape's fine-tuning config (the model card's "3.3B" shape model
    # presumably counts the VAE, about 0.3B, too)
    assert 3.0e9 < count < 3.1e9
    assert sum(block.use_moe for block in model.blocks) == 6
    assert [block.skip_linear is not None for block in model.blocks].count(True) == 10


def test_fixed_partition_at_inference():
    model = PlainDiT(plain_dit_config("tiny", vape="va-rope"))
    assert torch.equal(model.inference_visibility(2, 9), fixed_partition(9, batch=2))
    assert PlainDiT(plain_dit_config("tiny")).inference_visibility(2, 9) is None


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="num_moe_layers"):
        plain_dit_config("tiny", num_moe_layers=9)
    with pytest.raises(ConfigError, match="moe_top_k"):
        plain_dit_config("tiny", num_experts=2, moe_top_k=3)
    with pytest.raises(ConfigError, match="context_dm"):
        plain_dit_config("tiny", context_dm=3)
    with pytest.raises(ConfigError, match="model.arch"):
        denoiser_config({"arch": "unet"})
    with pytest.raises(ConfigError, match="not a plain preset"):
        denoiser_config({"arch": "plain", "preset": "paper-1.1b"})
    assert denoiser_config({"arch": "plain", "preset": "hunyuan3d-2.1"}).hidden_size == 2048
    with pytest.raises(ValueError, match=r"cond must be \(1, L_c, 64\)"):
        PlainDiT(plain_dit_config("tiny"))(torch.zeros(1, 4, 8), torch.zeros(1), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match=r"\(B, 4\) bool"):
        PlainDiT(plain_dit_config("tiny", vape="va-rope"))(
            torch.zeros(1, 4, 8), torch.zeros(1), torch.zeros(1, 3, 64),
            visible=torch.ones(1, 5, dtype=torch.bool))


def test_rejects_a_state_dict_of_another_shape():
    model = PlainDiT(plain_dit_config("tiny"))
    other = PlainDiT(plain_dit_config("tiny", num_moe_layers=2))
    with pytest.raises(ValueError, match="unexpected"):
        model.load_hunyuan3d_state_dict(other.state_dict())
    assert np.isfinite(count_parameters(model))
