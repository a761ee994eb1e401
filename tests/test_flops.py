"""The analytic FLOP count of the MM-DiT and the patch encoder against an independent count:
torch's FlopCounterMode on the real modules (attention through the math backend, whose two
matrix products the counter sees on the CPU)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vilearn.dit.conditioner import PatchEncoder
from vilearn.dit.config import dit_config
from vilearn.dit.flops import dit_forward_flops, patch_encoder_flops, skipped_input_grads
from vilearn.dit.model import MMDiT

SHAPES = [  # DiT overrides, batch, shape tokens, image tokens
    ({}, 2, 24, 9),
    ({"hidden_size": 96, "num_heads": 6, "depth": 3, "depth_single_blocks": 1, "mlp_ratio": 2.5,
      "guidance_embed": True, "vape": "va-rope"}, 3, 17, 5),
]


def counted(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("overrides, batch, tokens, cond_tokens", SHAPES)
def test_dit_forward_and_backward_flops_match_the_flop_counter(overrides, batch, tokens, cond_tokens):
    config = dit_config("tiny", **overrides)
    model = MMDiT(config)
    x = torch.randn(batch, tokens, config.in_channels)
    cond = torch.randn(batch, cond_tokens, config.context_in_dim)
    t, visible = torch.rand(batch), torch.rand(batch, tokens) < 0.4
    guidance = torch.full((batch,), 3.0) if config.guidance_embed else None
    forward = dit_forward_flops(config, batch, tokens, cond_tokens)
    assert counted(lambda: model(x, t, cond, visible, guidance)) == forward
    with sdpa_kernel(SDPBackend.MATH):
        out = model(x, t, cond, visible, guidance)
    backward = counted(lambda: out.square().mean().backward())
    assert backward == 2 * forward - skipped_input_grads(config, batch, tokens, cond_tokens, False)


def test_patch_encoder_flops_match_the_flop_counter():
    # training mode: in eval mode nn.TransformerEncoder takes a fused path the counter cannot see
    encoder = PatchEncoder(image_size=32, patch_size=8, width=48, depth=2, num_heads=4).train()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert counted(lambda: encoder(images)) == patch_encoder_flops(32, 8, 48, 2, batch=3)
