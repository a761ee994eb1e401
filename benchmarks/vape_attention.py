"""How much attention crosses the visible/invisible boundary under VA-RoPE, relative to `none`.

The paper: with m = 0, n = 50, "cross-category attention drops by about half". Three measurements:

1. analytic: for an aligned pair (k = q), the rotated logit q . R_{n-m} q over q . q averaged over
   frequencies, i.e. mean_j cos((n - m) omega_j), by head dimension;
2. at initialisation: the first double-stream block of a freshly built MM-DiT (our DiT init, and
   PyTorch's default init as in hy3dgen), random latents and image tokens, the fixed partition;
   attention mass from each category's queries onto the other category's keys, va-rope / none;
3. aligned tokens: the same block's normed queries used as keys (k = q, a stand-in for a trained
   correspondence) with features sharing a common component, va-rope / none.

Categories: visible = image tokens + VST (first third of the shape tokens), invisible = IST.

Run: PYTHONPATH=src python benchmarks/vape_attention.py
"""

from __future__ import annotations

import argparse

import torch

from vilearn.dit import MMDiT, dit_config, fixed_partition
from vilearn.dit.math import rope_frequencies, timestep_embedding


def cross_mass(q: torch.Tensor, k: torch.Tensor, visible_all: torch.Tensor) -> dict[str, float]:
    """q, k (B, H, L, D) joint [cond, shape]; visible_all (B, L) bool. Mean attention mass that
    visible queries put on invisible keys and the reverse."""
    attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # (B, H, L, L)
    vis = visible_all[:, None, :, None].float()  # queries
    to_inv = (attn * (~visible_all)[:, None, None, :]).sum(-1, keepdim=True)  # (B, H, L, 1)
    to_vis = 1.0 - to_inv
    return {
        "visible->invisible": ((to_inv * vis).sum() / (vis.sum() * attn.shape[1])).item(),
        "invisible->visible": (
            (to_vis * (1 - vis)).sum() / ((1 - vis).sum() * attn.shape[1])
        ).item(),
    }


def block_qk(model: MMDiT, x, t, cond, visible, aligned: bool):
    """Normed, VAPE-encoded q, k of the first double-stream block: (B, H, L_c + N, D) each."""
    block = model.double_blocks[0]
    shape = model.latent_in(x)
    vec = model.time_in(timestep_embedding(t, 256, model.config.time_factor))
    cond = model.cond_in(cond)
    shape_mod, _ = block.img_mod(vec)
    cond_mod, _ = block.txt_mod(vec)
    sq, sk, _ = block.img_attn.qkv_heads(shape_mod.modulate(block.img_norm1(shape)))
    cq, ck, _ = block.txt_attn.qkv_heads(cond_mod.modulate(block.txt_norm1(cond)))
    if aligned:
        sk, ck = sq, cq
    pes = model.vape(visible, cond.shape[1], shape.shape[1])
    if pes is not None:
        cq, ck, sq, sk = pes[0](cq, ck, sq, sk)
    return torch.cat((cq, sq), 2), torch.cat((ck, sk), 2)


def measure(init: str, aligned: bool, shared: float, args) -> dict[str, float]:
    g = torch.Generator().manual_seed(args.seed)
    base = dict(
        dit_config("paper-0.39b").__dict__,
        depth=1,
        depth_single_blocks=0,
        context_in_dim=args.context,
    )
    out = {}
    for vape in ("none", "va-rope"):
        torch.manual_seed(args.seed)
        model = MMDiT(dit_config("paper-0.39b", **{**base, "vape": vape}), init=init == "dit")
        common = torch.randn(1, 1, args.context, generator=torch.Generator().manual_seed(9))
        x = torch.randn(args.batch, args.tokens, model.config.in_channels, generator=g)
        cond = torch.randn(args.batch, args.cond_tokens, args.context, generator=g)
        x = x + shared * common[..., : model.config.in_channels]
        cond = cond + shared * common
        t = torch.rand(args.batch, generator=g)
        visible = fixed_partition(args.tokens, batch=args.batch)
        visible_all = torch.cat(
            (torch.ones(args.batch, args.cond_tokens, dtype=torch.bool), visible), 1
        )
        with torch.no_grad():
            q, k = block_qk(model, x, t, cond, visible, aligned)
            out[vape] = cross_mass(q, k, visible_all)
        g = torch.Generator().manual_seed(args.seed)  # same inputs for both
    return {key: out["va-rope"][key] / out["none"][key] for key in out["none"]} | {
        f"none {key}": value for key, value in out["none"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--cond-tokens", type=int, default=257)
    parser.add_argument("--context", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("1. analytic aligned-pair logit retention mean_j cos(50 omega_j), theta 10000:")
    for dim in (16, 32, 64, 128):
        print(
            f"   head_dim {dim:3d}: {torch.cos(50 * rope_frequencies(dim, 1e4)).mean().item():.3f}"
        )

    print(
        f"\nMM-DiT paper-0.39b width (head_dim 64), first double block, N={args.tokens} shape "
        f"tokens (first third visible), {args.cond_tokens} image tokens; ratios va-rope / none"
    )
    cases = [
        ("2. init, DiT init (adaLN-zero)", "dit", False, 0.0),
        ("2. init, PyTorch default init (hy3dgen)", "default", False, 0.0),
        ("3. aligned k = q, independent features", "dit", True, 0.0),
        ("3. aligned k = q, shared component 1.0", "dit", True, 1.0),
    ]
    for name, init, aligned, shared in cases:
        r = measure(init, aligned, shared, args)
        print(
            f"   {name:42s} vis->inv {r['visible->invisible']:.3f}  inv->vis "
            f"{r['invisible->visible']:.3f}   (none: vis->inv {r['none visible->invisible']:.3f}, "
            f"inv->vis {r['none invisible->visible']:.3f})"
        )


if __name__ == "__main__":
    main()
