"""Model FLOPs of the MM-DiT and the patch encoder, counted analytically (matrix products only).

What is counted is what ``torch.utils.flop_counter.FlopCounterMode`` counts: every matrix
product, 2 FLOPs per multiply-add (linear layers, the patch convolution, and attention's two
products QK^T and AV, 4 L^2 W per sample over all heads); norms, activations, RoPE and the
softmax are not. A training step is taken as 3x the forward (the usual MFU convention: the
backward computes a gradient for the input and one for the weight of each product); the exact
backward is smaller by the input gradients nobody asks for (``skipped_input_grads``).
"""

from __future__ import annotations

from vilearn.dit.config import DiTConfig


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention(tokens: int, width: int) -> int:
    """QK^T and AV over ``tokens`` tokens, all heads together (width = heads x head_dim)."""
    return 4 * tokens * tokens * width


def dit_forward_flops(config: DiTConfig, batch: int, tokens: int, cond_tokens: int) -> int:
    """One forward of ``MMDiT`` on (batch, tokens) shape tokens and (batch, cond_tokens) image
    tokens."""
    w, n, lc = config.hidden_size, tokens, cond_tokens
    hidden, both = int(w * config.mlp_ratio), tokens + cond_tokens
    embed = linear(1, 256, w) + linear(1, w, w)  # time_in, on vec
    if config.guidance_embed:
        embed *= 2
    flops = linear(n, config.in_channels, w) + embed + linear(lc, config.context_in_dim, w)
    double = (2 * linear(1, w, 6 * w)  # the two streams' modulations
              + linear(both, w, 3 * w) + attention(both, w) + linear(both, w, w)
              + linear(both, w, hidden) + linear(both, hidden, w))
    single = (linear(1, w, 3 * w) + linear(both, w, 3 * w + hidden) + attention(both, w)
              + linear(both, w + hidden, w))
    final = linear(1, w, 2 * w) + linear(n, w, config.in_channels)
    flops += config.depth * double + config.depth_single_blocks * single + final
    return batch * flops


def skipped_input_grads(config: DiTConfig, batch: int, tokens: int, cond_tokens: int,
                        cond_requires_grad: bool) -> int:
    """Backward products 3x-forward counts that autograd skips: the input gradients of the
    layers whose inputs need none (the noisy latents, the timestep embedding, and the image tokens
    when they come from a frozen or cached encoder)."""
    w = config.hidden_size
    flops = linear(tokens, config.in_channels, w) + linear(1, 256, w) * (2 if config.guidance_embed else 1)
    if not cond_requires_grad:
        flops += linear(cond_tokens, config.context_in_dim, w)
    return batch * flops


def patch_encoder_flops(image_size: int, patch_size: int, width: int, depth: int, batch: int) -> int:
    """One forward of ``PatchEncoder``: the patch convolution and ``depth`` pre-norm transformer
    layers (feed-forward 4 x width) over CLS + patches."""
    patches = (image_size // patch_size) ** 2
    tokens = 1 + patches
    layer = (linear(tokens, width, 3 * width) + attention(tokens, width) + linear(tokens, width, width)
             + linear(tokens, width, 4 * width) + linear(tokens, 4 * width, width))
    return batch * (linear(patches, 3 * patch_size * patch_size, width) + depth * layer)
