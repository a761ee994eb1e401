"""Tiny weights saved as Hunyuan3D releases them: the hub's folder structure and file names,
config.yaml in hy3dgen's / hy3dshape's format, the checkpoint's key layout. The 2.0 denoiser is
hy3dgen 2.0.2's own ``Hunyuan3DDiT`` (random); the 2.1 one has the weights of the reference
``HunYuanDiTPlain`` fixture (tests/fixtures/plain_dit.safetensors); image encoders are
transformers DINOv2s (as hy3dgen builds them).

    HUB/tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/{config.yaml, model.fp16.safetensors}
    HUB/tencent/Hunyuan3D-2/hunyuan3d-vae-v2-0-withencoder/{config.yaml, model.fp16.safetensors}
    HUB/tencent/Hunyuan3D-2.1/hunyuan3d-dit-v2-1/{config.yaml, model.fp16.ckpt}
    HUB/tencent/Hunyuan3D-2.1/hunyuan3d-vae-v2-1/{config.yaml, model.fp16.ckpt}
    HUB/facebook/dinov2-giant/, dinov2-large/   DINOv2 folders saved by transformers
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from hy3dgen_ref import hunyuan3ddit

DIT = dict(in_channels=8, context_in_dim=32, hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
           depth_single_blocks=2, axes_dim=[16], theta=10000, qkv_bias=True, guidance_embed=False)
DINO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            image_size=28, patch_size=14)
IMAGE = 28  # 1 CLS + (28 / 14)^2 = 5 image tokens of width 32
VAE = dict(num_latents=16, embed_dim=8, num_freqs=4, include_pi=False, heads=4, width=32,
           num_decoder_layers=1, num_encoder_layers=1, qkv_bias=False, qk_norm=True,
           scale_factor=0.9990943042622529, geo_decoder_mlp_expand_ratio=4,
           geo_decoder_downsample_ratio=1, geo_decoder_ln_post=True, point_feats=4)
# The model section of a vilearn config for the DiT above.
MODEL = {"preset": "hunyuan3d-2", **{k: v for k, v in DIT.items() if k != "axes_dim"}}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-zero everything (zero-initialised modulations would hide most of the maths)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() < 2 else 1 / math.sqrt(p.shape[-1])))
    return model


def save_dinov2(folder: Path, seed: int, config: dict = DINO):
    """A random transformers DINOv2 and its image processor, saved as a model folder."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**config))
    model.save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                                   image_mean=[0.485, 0.456, 0.406],
                                   image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return model


def reference_dit(state: dict | None = None, seed: int = 0):
    """hy3dgen's Hunyuan3DDiT at the tiny size: random (``seed``) or with ``state`` loaded."""
    model = hunyuan3ddit().Hunyuan3DDiT(**DIT)
    if state is None:
        return randomize(model, seed).eval()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def write_fp16_safetensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in tensors.items()}, str(path))


def pipeline_sections(package: str, dino: dict) -> dict:
    """The conditioner, scheduler, image processor and pipeline sections of a released DiT's
    config.yaml (``package``: hy3dgen.shapegen for 2.0, hy3dshape for 2.1)."""
    models = f"{package}.models" + ("" if package.startswith("hy3dgen") else ".conditioner")
    return {
        "conditioner": {"target": f"{models}.SingleImageEncoder", "params": {
            "main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {
                "config": {**dino, "model_type": "dinov2"}, "image_size": IMAGE, "use_cls_token": True}}}},
        "scheduler": {"target": f"{package}.schedulers.FlowMatchEulerDiscreteScheduler",
                      "params": {"num_train_timesteps": 1000}},
        "image_processor": {"target": f"{package}.preprocessors.ImageProcessorV2",
                            "params": {"size": 512, "border_ratio": 0.15}},
        "pipeline": {"target": f"{package}.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


def save_hunyuan3d_20(hub: Path) -> dict[str, Path]:
    """The three folders above, tiny and random; returns their paths by name."""
    from vilearn.vae import VecSetVAE
    from vilearn.vae.config import from_hy3dgen_params

    repo = hub / "tencent" / "Hunyuan3D-2"
    dino_folder = hub / "facebook" / "dinov2-giant"
    save_dinov2(dino_folder, seed=0)
    released_dino = save_dinov2(hub / "unused-dinov2", seed=1)  # the one inside the checkpoint
    torch.manual_seed(2)
    vae = randomize(VecSetVAE(from_hy3dgen_params(VAE, has_encoder=True)), seed=3)
    dit = reference_dit(seed=4)

    vae_folder = repo / "hunyuan3d-vae-v2-0-withencoder"
    vae_config = {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": VAE}
    write_fp16_safetensors(vae_folder / "model.fp16.safetensors", vae.state_dict())
    (vae_folder / "config.yaml").write_text(yaml.safe_dump(vae_config, sort_keys=False))

    dit_folder = repo / "hunyuan3d-dit-v2-0"
    decoder = {k: v for k, v in vae.state_dict().items() if not k.startswith(("encoder.", "pre_kl."))}
    write_fp16_safetensors(dit_folder / "model.fp16.safetensors", {
        **{f"model.{k}": v for k, v in dit.state_dict().items()},
        **{f"vae.{k}": v for k, v in decoder.items()},
        **{f"conditioner.main_image_encoder.model.{k}": v for k, v in released_dino.state_dict().items()},
    })
    decoder_params = {k: v for k, v in VAE.items() if k not in ("num_encoder_layers", "point_feats")}
    config = {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": DIT},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": decoder_params},
        **pipeline_sections("hy3dgen.shapegen", DINO),
    }
    (dit_folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {"dit": dit_folder, "vae": vae_folder, "dinov2": dino_folder}


def released_parts(weights: Path) -> dict[str, dict[str, torch.Tensor]]:
    """hy3dgen's own parse of a released .safetensors (``from_single_file``): split the keys at
    their first dot into the model / vae / conditioner parts."""
    from safetensors.torch import load_file

    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(weights)).items():
        name = key.split(".")[0]
        parts.setdefault(name, {})[key[len(name) + 1:]] = value
    return parts


PLAIN_FIXTURE = Path(__file__).parent / "fixtures" / "plain_dit.safetensors"
VAE21 = dict(num_latents=16, embed_dim=4, num_freqs=4, include_pi=False, heads=4, width=32,
             num_encoder_layers=1, num_decoder_layers=1, qkv_bias=False, qk_norm=True,
             scale_factor=1.0039506158752403, geo_decoder_mlp_expand_ratio=4,
             geo_decoder_downsample_ratio=1, geo_decoder_ln_post=True, point_feats=4,
             pc_size=320, pc_sharpedge_size=0)
DINO21 = {**DINO, "hidden_size": 24}  # the reference fixture's context width


def plain_reference() -> tuple[dict, dict, dict]:
    """HunYuanDiTPlain's small config, weights and outputs, made from the reference code by
    tests/fixtures/make_plain_dit.py: (config, weights, tensors)."""
    import json

    from safetensors import safe_open

    with safe_open(str(PLAIN_FIXTURE), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        config = json.loads(handle.metadata()["config"])
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    return config, weights, tensors


def save_hunyuan3d_21(hub: Path) -> dict[str, Path]:
    """HUB/tencent/Hunyuan3D-2.1/{hunyuan3d-dit-v2-1, hunyuan3d-vae-v2-1}/{config.yaml,
    model.fp16.ckpt} (torch.save, float16, as released) and HUB/facebook/dinov2-large; the
    denoiser's weights are those of the reference fixture."""
    from vilearn.vae import VecSetVAE
    from vilearn.vae.config import from_hy3dgen_params

    repo = hub / "tencent" / "Hunyuan3D-2.1"
    dino_folder = hub / "facebook" / "dinov2-large"
    save_dinov2(dino_folder, 5, DINO21)
    dino = save_dinov2(hub / "unused-dinov2-large", 6, DINO21)  # the one inside the checkpoint
    torch.manual_seed(7)
    vae = randomize(VecSetVAE(from_hy3dgen_params(VAE21, has_encoder=True)), seed=8)
    half = lambda state: {k: v.detach().half() for k, v in state.items()}  # noqa: E731
    vae_folder = repo / "hunyuan3d-vae-v2-1"
    vae_folder.mkdir(parents=True)
    torch.save(half(vae.state_dict()), vae_folder / "model.fp16.ckpt")
    (vae_folder / "config.yaml").write_text(yaml.safe_dump(
        {"target": "hy3dshape.models.autoencoders.ShapeVAE", "params": VAE21}, sort_keys=False))

    config, weights, _ = plain_reference()
    dit_folder = repo / "hunyuan3d-dit-v2-1"
    dit_folder.mkdir(parents=True)
    conditioner = {f"main_image_encoder.model.{k}": v for k, v in dino.state_dict().items()}
    torch.save({"model": half(weights), "vae": half(vae.state_dict()), "conditioner": half(conditioner)},
               dit_folder / "model.fp16.ckpt")
    params = {"input_size": VAE21["num_latents"], **config, "text_len": 5, "with_decoupled_ca": False,
              "use_attention_pooling": False, "qk_norm_type": "rms", "use_pos_emb": False}
    (dit_folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"target": "hy3dshape.models.denoisers.hunyuandit.HunYuanDiTPlain", "params": params},
        "vae": {"target": "hy3dshape.models.autoencoders.ShapeVAE", "params": VAE21},
        **pipeline_sections("hy3dshape", DINO21),
    }, sort_keys=False))
    return {"dit": dit_folder, "vae": vae_folder, "dinov2": dino_folder}
