"""Mixture-of-experts FFN of Hunyuan3D-2.1's DiT (``MoEBlock``), with its parameter names.

Each token's gate scores are a softmax over the experts; the token goes to its top-k experts,
weighted by their (not renormalised) scores, and always through one shared expert:

    y = shared(x) + sum_{e in topk(x)} softmax(W_g x)_e * expert_e(x)

No capacity limit, no token dropping, no gating noise: training and inference compute the same
function (the reference routes with different code in its two modes; the maths are one).

Load balancing (training only), DeepSeek-MoE's expert-level loss as the reference computes it
over all T tokens of the batch: P_e = mean_t softmax(W_g x_t)_e, f_e = E * (share of the T * k
routing choices that picked e), aux = sum_e P_e f_e (gradient through P only). The reference
scales it by 0.01 and injects its gradient in backward; here it is returned, and the model
weighs it (``PlainDiTConfig.moe_aux_weight``) for the trainer to add to the loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GELUProjection(nn.Module):
    """Linear then exact GELU (diffusers' ``GELU`` activation module, named ``proj``)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.gelu(self.proj(x))


class FeedForward(nn.Module):
    """(..., dim) -> (..., dim) through ``inner`` hidden units; diffusers' ``FeedForward`` names
    (``net.0.proj``, ``net.2``) with GELU and no dropout."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class MoEGate(nn.Module):
    """Router weights (num_experts, dim), no bias."""

    def __init__(self, dim: int, num_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """x (T, dim) -> gate scores (T, num_experts), a softmax over the experts."""
        return nn.functional.linear(x, self.weight).softmax(dim=-1)


def load_balancing_loss(scores: Tensor, chosen: Tensor) -> Tensor:
    """scores (T, E) softmax gate scores, chosen (T, k) expert indices -> () sum_e P_e f_e."""
    n_experts = scores.shape[-1]
    picked = nn.functional.one_hot(chosen.flatten(), n_experts).float().mean(0)  # (E,)
    return (scores.mean(0) * picked * n_experts).sum()


class MoEBlock(nn.Module):
    """Top-k routed experts plus a shared expert: (B, L, dim) -> (B, L, dim), aux loss or None."""

    def __init__(self, dim: int, num_experts: int, top_k: int, inner: int):
        super().__init__()
        self.top_k = top_k
        self.experts = nn.ModuleList(FeedForward(dim, inner) for _ in range(num_experts))
        self.gate = MoEGate(dim, num_experts)
        self.shared_experts = FeedForward(dim, inner)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x (B, L, dim) -> (output (B, L, dim), load-balancing loss () in training, else None)."""
        flat = x.reshape(-1, x.shape[-1])  # (T, dim)
        scores = self.gate(flat)  # (T, E)
        weights, chosen = scores.topk(self.top_k, dim=-1, sorted=False)  # (T, k)
        out = self.routed(flat, weights, chosen) + self.shared_experts(flat)
        aux = load_balancing_loss(scores, chosen) if self.training else None
        return out.view(x.shape), aux

    def routed(self, flat: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """sum over each token's k choices of weight * expert(token): tokens grouped by expert,
        each expert run once on its group. (T, dim), (T, k), (T, k) -> (T, dim)."""
        choice_expert = chosen.flatten()  # (T k,)
        order = choice_expert.argsort(stable=True)
        token = order // self.top_k  # the token of each choice, grouped by expert
        weight = weights.flatten()[order, None].to(flat.dtype)
        counts = torch.bincount(choice_expert, minlength=len(self.experts)).tolist()
        out = torch.zeros_like(flat)
        start = 0
        for expert, count in zip(self.experts, counts):
            # In training an expert with no token still runs (on zero rows), so every
            # parameter takes part in the graph, as DDP expects.
            if count or self.training:
                rows = token[start : start + count]
                out = out.index_add(0, rows, expert(flat[rows]) * weight[start : start + count])
            start += count
        return out
