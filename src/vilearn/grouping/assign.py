"""Each visible point's token: argmax over tokens of the decoder's head-averaged cross-attention.

A_ij = mean_h softmax_j(q_hi . k_hj / sqrt(d)), with q from the decoder's query path
(Fourier -> query_proj -> ln_1 -> c_q -> q_norm) and k from its key path (decoded tokens ->
[latents_proj] -> ln_2 -> c_kv -> k_norm), exactly as ``CrossAttentionDecoder`` computes them
(``attention_queries`` / ``attention_keys``). The softmax is taken per head *before* the head
mean, as in the paper, so the argmax of A is not the argmax of the mean logit.

Points are processed in chunks sized from a memory budget: one chunk holds the scores (the
softmax is taken in place) plus reduction temporaries, counted as ``4 * B * m * N * (2H + 1)``
bytes for m points (a safe over-estimate), so memory is flat in the number of points: 100k
points x 4096 tokens x 16 heads run ~30 points at a time in the default 16 MiB budget.
Scores are computed in float32 whatever the model's dtype (bf16 ties would make the argmax
depend on rounding).
"""

from __future__ import annotations

import math

import torch

# Per chunk. Small chunks stay in cache on CPU (20k points x 2048 tokens: 0.6 s at 16 MiB,
# 1.3 s at 512 MiB, one thread); GPUs prefer big ones.
DEFAULT_MAX_BYTES = 16 * 2**20
DEFAULT_MAX_BYTES_CUDA = 1024 * 2**20


def head_summed_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """H * A: sum over heads of softmax_j(q . k / sqrt(d)); same argmax as the head mean.

    q (B, H, m, d), k (B, H, N, d) -> (B, m, N). ``vilearn.vae.layers.attention_probs``
    computed in place (one (B, H, m, N) buffer, about half its time on CPU).
    """
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # (B, H, m, N)
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    scores.mul_(scores.sum(dim=-1, keepdim=True).reciprocal_())
    return scores.sum(dim=1)


def chunk_points(batch: int, heads: int, num_tokens: int, max_bytes: int | None = DEFAULT_MAX_BYTES) -> int:
    """How many query points one chunk may hold within ``max_bytes`` (at least 1)."""
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    per_point = 4 * batch * num_tokens * (2 * heads + 1)
    return max(1, max_bytes // per_point)


@torch.no_grad()
def assign_to_keys(geo_decoder, points: torch.Tensor, keys: torch.Tensor,
                   chunk: int | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """argmax_j A_ij for precomputed keys.

    Args:
        geo_decoder: a ``vilearn.vae.decoder.CrossAttentionDecoder``.
        points: (B, M, 3) query points (object frame).
        keys: (B, H, N, d) from ``geo_decoder.attention_keys(tokens)``.
        chunk: points per chunk; default from ``max_bytes`` (default 16 MiB on CPU, 1 GiB on
            CUDA).
    Returns:
        (B, M) int64 token index of each point (the first maximum on exact ties).
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, M, 3), got {tuple(points.shape)}")
    if keys.ndim != 4 or keys.shape[0] != points.shape[0]:
        raise ValueError(f"keys must be (B, H, N, d) with B = {points.shape[0]}, got {tuple(keys.shape)}")
    b, h, n, _ = keys.shape
    if max_bytes is None:
        max_bytes = DEFAULT_MAX_BYTES_CUDA if keys.device.type == "cuda" else DEFAULT_MAX_BYTES
    chunk = chunk or chunk_points(b, h, n, max_bytes)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    keys = keys.float()
    dtype = next(geo_decoder.parameters()).dtype
    out = torch.empty(points.shape[:2], dtype=torch.int64, device=points.device)
    for start in range(0, points.shape[1], chunk):
        part = points[:, start:start + chunk].to(device=keys.device)
        queries = geo_decoder.attention_queries(part, dtype).float()  # (B, H, m, d)
        out[:, start:start + chunk] = head_summed_probs(queries, keys).argmax(dim=-1).to(out.device)
    return out


@torch.no_grad()
def token_assignment(geo_decoder, points: torch.Tensor, tokens: torch.Tensor,
                     chunk: int | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """Each point's most-attended token: points (B, M, 3), decoded tokens (B, N, W) -> (B, M) int64.

    ``tokens`` are ``VecSetVAE.decode(latents)`` (post-KL -> transformer), not raw latents.
    """
    if tokens.ndim != 3 or tokens.shape[0] != points.shape[0]:
        raise ValueError(f"tokens must be (B, N, W) with B = {points.shape[0]}, got {tuple(tokens.shape)}")
    return assign_to_keys(geo_decoder, points, geo_decoder.attention_keys(tokens), chunk, max_bytes)
