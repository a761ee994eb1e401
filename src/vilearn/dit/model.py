"""The MM-DiT denoiser: hy3dgen 2.0.2's ``Hunyuan3DDiT`` plus the VAPE switch.

With ``vape="none"`` the parameters and the maths are those of ``Hunyuan3DDiT``, so a Hunyuan3D-2
``hunyuan3d-dit-v2-0`` state dict loads with strict=True and predicts the same velocity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from vilearn.dit.base import VelocityModel
from vilearn.dit.config import DiTConfig
from vilearn.dit.layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock
from vilearn.dit.loading import denoiser_state, load_strict
from vilearn.dit.math import timestep_embedding
from vilearn.dit.vape import VAPE


class MMDiT(VelocityModel):
    """Velocity model v(x_t, t | image tokens, visibility); flow convention: ``vilearn.flow``."""

    # The single-stream blocks' linear1 (qkv + MLP in) and linear2 (attention + MLP out) count
    # as attention.
    LAYER_GROUPS = {
        "attention": r"double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|single_blocks\.\d+\.linear[12]",
        "mlp": r"double_blocks\.\d+\.(img|txt)_mlp\.[02]",
        "modulation": r"double_blocks\.\d+\.(img|txt)_mod\.lin|single_blocks\.\d+\.modulation\.lin"
                      r"|final_layer\.adaLN_modulation\.1",
        "embedders": r"latent_in|cond_in|(time|guidance)_in\.(in|out)_layer|final_layer\.linear",
    }

    def __init__(self, config: DiTConfig, init: bool = True):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.latent_in = nn.Linear(config.in_channels, width, bias=True)
        if config.time_embedding == "step1x-3d":
            self.time_in = MLPEmbedder(width, 4 * width, width, activation="gelu")
        else:
            self.time_in = MLPEmbedder(in_dim=256, hidden_dim=width)
        self.cond_in = nn.Linear(config.context_in_dim, width)
        self.guidance_in = MLPEmbedder(256, width) if config.guidance_embed else nn.Identity()
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(width, config.num_heads, config.mlp_ratio, qkv_bias=config.qkv_bias)
            for _ in range(config.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(width, config.num_heads, mlp_ratio=config.mlp_ratio)
            for _ in range(config.depth_single_blocks)
        )
        self.final_layer = LastLayer(width, config.in_channels)
        self.vape = VAPE(config)
        if init:
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's recipe: Xavier linears, N(0, 0.02) time embedder, adaLN-zero modulation and output.

        At initialisation every block is the identity and the prediction is 0.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embedder in (self.time_in, self.guidance_in):
            if isinstance(embedder, MLPEmbedder):
                nn.init.normal_(embedder.in_layer.weight, std=0.02)
                nn.init.normal_(embedder.out_layer.weight, std=0.02)
        for block in self.double_blocks:
            for lin in (block.img_mod.lin, block.txt_mod.lin):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        for block in self.single_blocks:
            nn.init.zeros_(block.modulation.lin.weight)
            nn.init.zeros_(block.modulation.lin.bias)
        for lin in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.vape.reset_parameters()

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor,
        visible: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity.

        Args:
            x: (B, N, C) noisy latents x_t.
            t: (B,) time in [0, 1] (0 = noise, 1 = data; see ``vilearn.flow``).
            cond: (B, L_c, context_in_dim) image tokens.
            visible: (B, N) bool, True for visible shape tokens (VST); needed by ``va-rope`` and
                ``va-lpe``, ignored by ``none`` and ``rope``.
            guidance: (B,) guidance strength, only for ``guidance_embed`` models.
        Returns:
            (B, N, C) velocity.
        """
        self._check_inputs(x, t, cond)
        shape = self.latent_in(x)  # (B, N, W)
        vec = self.time_in(self.time_frequencies(t).to(shape.dtype))  # (B, W)
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError(
                    "guidance (B,) is required by a guidance-distilled model (guidance_embed)"
                )
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256, self.config.time_factor))
        cond = self.cond_in(cond)  # (B, L_c, W)

        pes = self.vape(visible, cond.shape[1], shape.shape[1], device=x.device)
        for i, block in enumerate(self.double_blocks):
            pe = None if pes is None else pes[i]
            shape, cond = self._run(block, shape, cond, vec, pe)

        tokens = torch.cat((cond, shape), 1)  # (B, L_c + N, W)
        for block in self.single_blocks:
            tokens = self._run(block, tokens, vec)
        return self.final_layer(tokens[:, cond.shape[1] :], vec)  # (B, N, C)

    def time_frequencies(self, t: Tensor) -> Tensor:
        """t (B,) -> the sinusoidal input of ``time_in`` (see ``DiTConfig.time_embedding``)."""
        if self.config.time_embedding == "step1x-3d":
            return timestep_embedding(1.0 - t, self.config.hidden_size, 10_000, 1000.0,
                                      sin_first=True)
        # hy3dgen passes its time_factor positionally, i.e. as max_period; t is scaled by 1000.
        # Kept as is: Hunyuan3D-2 weights were trained with this embedding.
        return timestep_embedding(t, 256, self.config.time_factor)

    def load_hunyuan3d_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load a ``Hunyuan3DDiT`` state dict strictly; VAPE's own parameters may be absent.

        Accepts the bare denoiser dict or a Hunyuan3D-2 checkpoint's (``{"model": {...}}`` or keys
        prefixed ``model.``). Returns the VAPE parameter names left at their initial values.
        """
        return load_strict(self, denoiser_state(state_dict))

    def load_step1x3d_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load Step1X-3D's released shape DiT strictly through ``vilearn.dit.step1x``'s name map
        (needs ``time_embedding: step1x-3d``). Returns the VAPE parameter names left as they are."""
        from vilearn.dit.step1x import step1x3d_to_mmdit

        if self.config.time_embedding != "step1x-3d":
            raise ValueError("Step1X-3D weights need model.time_embedding: step1x-3d "
                             "(preset step1x-3d)")
        return load_strict(self, step1x3d_to_mmdit(state_dict))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
