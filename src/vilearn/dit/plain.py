"""The cross-attention DiT: Hunyuan3D-2.1's ``HunYuanDiTPlain`` plus the VAPE switch.

Tokens: the timestep embedding is prepended to the shape tokens as one extra token; each block
runs self-attention over [time token, shape tokens], cross-attention from them to the image tokens,
and an FFN (a mixture of experts in the last ``num_moe_layers`` blocks, ``vilearn.dit.moe``).
Blocks of the second half first fuse a long skip from the mirrored block of the first half:
x <- LayerNorm(Linear([skip, x])). The final layer norms, drops the time token and projects to
the latent channels.

Parameter names and maths are those of ``HunYuanDiTPlain`` (Tencent-Hunyuan/Hunyuan3D-2.1,
``hy3dshape/models/denoisers/hunyuandit.py``) with the released options (LayerNorm, RMS QK-norm,
no attention pooling, no decoupled cross-attention, no positional embedding), so a
``hunyuan3d-dit-v2-1`` state dict loads with strict=True and, with VAPE ``none``, predicts the
same velocity. The time convention is ours (``vilearn.flow``) and the reference's alike: t in
[0, 1], 0 = noise. VAPE (``vilearn.dit.vape``) codes Q and K of both attentions of every block.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange
from torch import Tensor, nn

from vilearn.dit.base import VelocityModel
from vilearn.dit.config import PlainDiTConfig
from vilearn.dit.loading import denoiser_state, load_strict
from vilearn.dit.math import attention, timestep_embedding
from vilearn.dit.moe import MoEBlock
from vilearn.dit.vape import VAPE, Code, Encoding, unchanged


def heads_first(x: Tensor, parts: int, num_heads: int) -> tuple[Tensor, ...]:
    """The reference's head layout: the concatenated projections [p_1 | ... | p_K] (B, L, K*H*D)
    are cut into H heads first and each head into K parts -> K tensors (B, H, L, D).

    So "q" of head h is the h-th slice of width D of the concatenation read in steps of K*D, not
    of ``to_q``'s output alone; the released weights were trained with this layout."""
    return tuple(rearrange(x, "B L (H K D) -> K B H L D", H=num_heads, K=parts))


class PlainAttention(nn.Module):
    """Self-attention (``context_dim`` None) or cross-attention with the reference's names:
    ``to_q``, ``to_k``, ``to_v``, per-head RMS ``q_norm`` / ``k_norm``, ``out_proj``."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None,
                 qkv_bias: bool = False, qk_norm: bool = True):
        super().__init__()
        self.num_heads, self.is_cross = num_heads, context_dim is not None
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, dim, bias=qkv_bias)
        head_dim = dim // num_heads
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor, context: Tensor | None = None,
                q_code: Code = unchanged, k_code: Code = unchanged) -> Tensor:
        """x (B, L, dim), context (B, L_c, context_dim) for cross-attention -> (B, L, dim).

        ``q_code`` / ``k_code``: VAPE's codes for the queries' and the keys' tokens."""
        if self.is_cross:
            q = rearrange(self.to_q(x), "B L (H D) -> B H L D", H=self.num_heads)
            k, v = heads_first(torch.cat((self.to_k(context), self.to_v(context)), -1), 2,
                               self.num_heads)
        else:
            q, k, v = heads_first(torch.cat((self.to_q(x), self.to_k(x), self.to_v(x)), -1), 3,
                                  self.num_heads)
        q, k = q_code(self.q_norm(q)), k_code(self.k_norm(k))
        return self.out_proj(attention(q, k, v))


class MLP(nn.Module):
    """fc1 -> GELU -> fc2, width 4 dim (the dense blocks' FFN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gelu = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.gelu(self.fc1(x)))


class PlainBlock(nn.Module):
    """[skip fusion] -> self-attention -> cross-attention -> FFN (or MoE), pre-norm residuals."""

    def __init__(self, config: PlainDiTConfig, skip: bool, moe: bool):
        super().__init__()
        c, width = config, config.hidden_size
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn1 = PlainAttention(width, c.num_heads, None, c.qkv_bias, c.qk_norm)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.attn2 = PlainAttention(width, c.num_heads, c.context_dim, c.qkv_bias, c.qk_norm)
        self.norm3 = nn.LayerNorm(width, eps=1e-6)
        if skip:
            self.skip_norm = nn.LayerNorm(width, eps=1e-6)
            self.skip_linear = nn.Linear(2 * width, width)
        else:
            self.skip_linear = None
        self.use_moe = moe
        if moe:
            self.moe = MoEBlock(width, c.num_experts, c.moe_top_k, inner=4 * width)
        else:
            self.mlp = MLP(width)

    def forward(self, x: Tensor, cond: Tensor, skip: Tensor | None = None,
                self_pe: Encoding | None = None,
                cross_pe: Encoding | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, 1 + N, W) [time token, shape tokens], cond (B, L_c, context_dim), skip like x.

        Returns x and the MoE load-balancing loss (training, MoE blocks) or None."""
        if self.skip_linear is not None:
            x = self.skip_norm(self.skip_linear(torch.cat((skip, x), dim=-1)))
        self_codes = (self_pe.shape, self_pe.shape) if self_pe is not None else ()
        x = x + self.attn1(self.norm1(x), None, *self_codes)
        cross_codes = (cross_pe.shape, cross_pe.cond) if cross_pe is not None else ()
        x = x + self.attn2(self.norm2(x), cond, *cross_codes)
        if self.use_moe:
            out, aux = self.moe(self.norm3(x))
        else:
            out, aux = self.mlp(self.norm3(x)), None
        return x + out, aux


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, 1, W): W frequencies [sin, cos] of t (max period 10000), Linear(W, 4W), GELU,
    Linear(4W, W). The token the model prepends to the shape tokens."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, t: Tensor) -> Tensor:
        frequencies = timestep_embedding(t, self.width, 10_000, 1.0, sin_first=True)
        return self.mlp(frequencies.to(self.mlp[0].weight.dtype))[:, None]


class FinalLayer(nn.Module):
    """LayerNorm, drop the time token, Linear: (B, 1 + N, W) -> (B, N, out_channels)."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=1e-6)
        self.linear = nn.Linear(width, out_channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm_final(x)[:, 1:])


class PlainDiT(VelocityModel):
    """Velocity model v(x_t, t | image tokens, visibility), cross-attention DiT.

    After a forward in training mode, ``aux_loss`` holds the weighted MoE load-balancing loss
    (``moe_aux_weight`` times its sum over the MoE layers; None without MoE layers and in eval):
    the trainer adds it to the flow-matching loss. Inference never computes it.
    """

    LAYER_GROUPS = {
        "attention": r"blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|out_proj)",
        "mlp": r"blocks\.\d+\.(mlp\.fc[12]|moe\.(experts\.\d+|shared_experts)\.net\.(0\.proj|2))",
        "skips": r"blocks\.\d+\.skip_linear",
        "embedders": r"x_embedder|t_embedder\.mlp\.[02]|final_layer\.linear",
    }

    def __init__(self, config: PlainDiTConfig, init: bool = True):
        super().__init__()
        self.config = config
        c, width = config, config.hidden_size
        self.x_embedder = nn.Linear(c.in_channels, width, bias=True)
        self.t_embedder = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(
            PlainBlock(c, skip=layer > c.depth // 2, moe=c.depth - layer <= c.num_moe_layers)
            for layer in range(c.depth)
        )
        self.final_layer = FinalLayer(width, c.in_channels)
        self.vape = VAPE(config, layers=2 * c.depth)  # per block: self-, then cross-attention
        if init:
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears with zero biases, N(0, 0.02) time embedder, zero output layer (the
        prediction starts at 0); norms at identity, MoE gates Kaiming (the reference's)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        self.vape.reset_parameters()

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, visible: Tensor | None = None) -> Tensor:
        """Predict the velocity.

        Args:
            x: (B, N, C) noisy latents x_t.
            t: (B,) time in [0, 1] (0 = noise, 1 = data; see ``vilearn.flow``).
            cond: (B, L_c, context_dim) image tokens.
            visible: (B, N) bool, True for VST; needed by ``va-rope`` and ``va-lpe``.
        Returns:
            (B, N, C) velocity.
        """
        self._check_inputs(x, t, cond)
        depth = self.config.depth
        tokens = torch.cat((self.t_embedder(t), self.x_embedder(x)), dim=1)  # (B, 1 + N, W)
        pes = self.vape(visible, cond.shape[1], x.shape[1], device=x.device, n_prefix=1)
        skips, aux_losses = [], []
        for layer, block in enumerate(self.blocks):
            skip = skips.pop() if layer > depth // 2 else None
            self_pe, cross_pe = (None, None) if pes is None else pes[2 * layer : 2 * layer + 2]
            tokens, aux = self._run(block, tokens, cond, skip, self_pe, cross_pe)
            if layer < depth // 2:
                skips.append(tokens)
            if aux is not None:
                aux_losses.append(aux)
        self.aux_loss = (self.config.moe_aux_weight * torch.stack(aux_losses).sum()
                         if aux_losses else None)
        return self.final_layer(tokens)  # (B, N, C)

    def load_hunyuan3d_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load a ``HunYuanDiTPlain`` state dict strictly; VAPE's own parameters may be absent.

        Accepts the bare denoiser dict or a checkpoint's (``{"model": {...}}`` or keys prefixed
        ``model.``). Returns the VAPE parameter names left at their initial values.
        """
        return load_strict(self, denoiser_state(state_dict))
