"""Step1X-3D's shape DiT in ``MMDiT``: a name map from its released layout (pure tensor work).

Step1X-3D (stepfun-ai/Step1X-3D, ``step1x3d_geometry/models/transformers/flux_transformer_1d.py``)
denoises with ``FluxTransformer1DModel``, built by diffusers' Flux blocks: 12 double-stream
blocks (``FluxTransformerBlock``) and 24 single-stream blocks (``FluxSingleTransformerBlock``),
width 1280, 20 heads, no positional encoding, DINOv2-with-registers-L tokens (CLS + patches, the
registers dropped) projected by ``proj_cross_attention``. Its released weights are those of the
wrapping ``FluxDenoiser`` (keys ``dit_model.*``; ``denoiser_model.dit_model.*`` in a training
checkpoint's ``state_dict``).

Read side by side with hy3dgen's ``Hunyuan3DDiT`` (our ``MMDiT``), the blocks compute the same
function; the weights differ only in layout, and this map is exact:

- separate ``to_q`` / ``to_k`` / ``to_v`` (and ``add_*_proj`` for the image stream) are our fused
  ``qkv`` rows [q; k; v]; the single blocks' ``to_q/k/v`` and ``proj_mlp`` are our ``linear1``
  rows [q; k; v; mlp];
- diffusers' RMS norms (``norm_q``, ``norm_added_k``, ...: ``weight``) are our QK-norm ``scale``;
- ``AdaLayerNormContinuous`` (``norm_out``) chunks its modulation as (scale, shift), our final
  layer as (shift, scale): the two halves of its rows swap;
- Step1X-3D predicts noise - x (diffusers' flow matching, sigma = 1 - t the noise level); our
  velocity is x - noise: ``proj_out`` is negated.

One thing is not a renaming, the time embedding, and ``DiTConfig.time_embedding: step1x-3d``
supports it in our blocks: diffusers' ``Timesteps`` over the full width, [sin, cos], of the
timestep 1000 sigma = 1000 (1 - t), then ``TimestepEmbedding`` width -> 4 width -> width with
GELU, where hy3dgen has 256 [cos, sin] frequencies of 1000 t and a SiLU MLP to the width.

Not supported: the label- and caption-conditioned variants (``proj_label_condtion``,
``proj_caption_condtion``: extra condition tokens concatenated in context) and a visual condition
whose width differs from ``condition_dim`` (``proj_visual_condtion``); the released
Step1X-3D-Geometry-1300m uses none of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

UNSUPPORTED = ("proj_visual_condtion.", "proj_label_condtion.", "proj_caption_condtion.")


class _Source:
    """The released tensors, each to be taken exactly once."""

    def __init__(self, state: Mapping[str, Tensor]):
        self.state = dict(state)

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise ValueError(f"Step1X-3D state dict: missing {key!r}")
        return self.state.pop(key)

    def rows(self, *keys: str) -> Tensor:
        """The tensors of ``keys`` stacked along the output dimension (fused projections)."""
        return torch.cat([self.take(key) for key in keys], dim=0)


def step1x3d_state(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``FluxTransformer1DModel`` keys from a released ``FluxDenoiser`` state dict (``dit_model.``),
    a training checkpoint (``{"state_dict": ...}``, ``denoiser_model.dit_model.``) or bare keys."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    for prefix in ("denoiser_model.dit_model.", "dit_model."):
        if any(k.startswith(prefix) for k in checkpoint):
            extra = [k for k in checkpoint if not k.startswith(prefix)]
            unsupported = [k for k in extra if any(u in k for u in UNSUPPORTED)]
            if unsupported:
                raise ValueError(f"Step1X-3D state dict: {unsupported[0]!r} belongs to a condition "
                                 "projection this MM-DiT does not have (label / caption / "
                                 "visual-width conditions are not supported)")
            return {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    return dict(checkpoint)


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def step1x3d_to_mmdit(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Step1X-3D's released shape-DiT weights -> an ``MMDiT`` state dict (``time_embedding:
    step1x-3d``). Every released tensor is used exactly once; a leftover raises ``ValueError``."""
    src = _Source(step1x3d_state(checkpoint))
    out: dict[str, Tensor] = {}
    for p in ("weight", "bias"):
        out[f"latent_in.{p}"] = src.take(f"proj_in.{p}")
        out[f"cond_in.{p}"] = src.take(f"proj_cross_attention.{p}")
        out[f"time_in.in_layer.{p}"] = src.take(f"time_proj.linear_1.{p}")
        out[f"time_in.out_layer.{p}"] = src.take(f"time_proj.linear_2.{p}")
        scale, shift = src.take(f"norm_out.linear.{p}").chunk(2)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat((shift, scale))
        out[f"final_layer.linear.{p}"] = -src.take(f"proj_out.{p}")  # noise - x -> x - noise

    for i in range(_count(src.state, r"transformer_blocks\.(\d+)\.")):
        a, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}img_mod.lin.{p}"] = src.take(f"{a}norm1.linear.{p}")
            out[f"{b}txt_mod.lin.{p}"] = src.take(f"{a}norm1_context.linear.{p}")
            out[f"{b}img_attn.qkv.{p}"] = src.rows(*(f"{a}attn.to_{x}.{p}" for x in "qkv"))
            out[f"{b}txt_attn.qkv.{p}"] = src.rows(*(f"{a}attn.add_{x}_proj.{p}" for x in "qkv"))
            out[f"{b}img_attn.proj.{p}"] = src.take(f"{a}attn.to_out.0.{p}")
            out[f"{b}txt_attn.proj.{p}"] = src.take(f"{a}attn.to_add_out.{p}")
            for ours, theirs in (("img_mlp", "ff"), ("txt_mlp", "ff_context")):
                out[f"{b}{ours}.0.{p}"] = src.take(f"{a}{theirs}.net.0.proj.{p}")
                out[f"{b}{ours}.2.{p}"] = src.take(f"{a}{theirs}.net.2.{p}")
        for stream, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
            out[f"{b}{stream}_attn.norm.query_norm.scale"] = src.take(f"{a}attn.{q}.weight")
            out[f"{b}{stream}_attn.norm.key_norm.scale"] = src.take(f"{a}attn.{k}.weight")

    for i in range(_count(src.state, r"single_transformer_blocks\.(\d+)\.")):
        a, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}linear1.{p}"] = src.rows(*(f"{a}attn.to_{x}.{p}" for x in "qkv"),
                                              f"{a}proj_mlp.{p}")
            out[f"{b}linear2.{p}"] = src.take(f"{a}proj_out.{p}")
            out[f"{b}modulation.lin.{p}"] = src.take(f"{a}norm.linear.{p}")
        out[f"{b}norm.query_norm.scale"] = src.take(f"{a}attn.norm_q.weight")
        out[f"{b}norm.key_norm.scale"] = src.take(f"{a}attn.norm_k.weight")

    if src.state:
        raise ValueError(f"Step1X-3D state dict: {len(src.state)} tensors the name map does not "
                         f"know, e.g. {sorted(src.state)[:3]}")
    return out
