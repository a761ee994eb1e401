"""Released denoiser folders, as published on the hub: read one to start fine-tuning from it
(``init.dit``), write one from a run (``vilearn export``).

The layout (Hunyuan3D-2's ``from_pretrained`` / ``smart_load_model``; 2.1's is the same)::

    tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/config.yaml            model / vae / conditioner / ...
    tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/model.fp16.safetensors keys model.*, vae.*, conditioner.*
    tencent/Hunyuan3D-2.1/hunyuan3d-dit-v2-1/config.yaml
    tencent/Hunyuan3D-2.1/hunyuan3d-dit-v2-1/model.fp16.ckpt      torch.save({"model": {...},
                                                                      "vae": {...}, "conditioner": {...}})

``config.yaml``'s ``model`` section names the denoiser class (``target``: hy3dgen's
``Hunyuan3DDiT`` loads into ``MMDiT``, hy3dshape's ``HunYuanDiTPlain`` into ``PlainDiT``) and its
constructor ``params``, which must be the ``model`` section's. The checkpoint's ``conditioner``
part is hy3dgen's ``SingleImageEncoder`` (``main_image_encoder.model.*``: a transformers
DINOv2), its ``vae`` part the VAE the denoiser was trained with (2.0: its decoder), which, with
config.yaml's ``vae.params.scale_factor``, is what ``vae_differences`` holds ``vae=`` against.

Step1X-3D's release (a diffusers pipeline folder) is recognised and refused (``unsupported``):
ViLearn has neither its VAE nor its conditioner; its denoiser loads through ``load_released``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vilearn.config import ConfigError, read_yaml
from vilearn.dit import MMDiT, PlainDiT, load_released
from vilearn.io import atomic_open, read_json, save_safetensors, write_json, write_text
from vilearn.train.denoiser import Denoiser

WEIGHT_NAMES = ("model.fp16.safetensors", "model.safetensors", "model.fp16.ckpt", "model.ckpt")
PARTS = ("model", "vae", "conditioner")
CONDITIONER_PREFIX = "main_image_encoder.model."  # hy3dgen's SingleImageEncoder -> its DINOv2
# Released class -> (our class, its constructor params that are our config's fields of the same
# name, params that must have the one value our class implements).
ARCHITECTURES = {
    "Hunyuan3DDiT": (MMDiT, ("in_channels", "context_in_dim", "hidden_size", "mlp_ratio",
                             "num_heads", "depth", "depth_single_blocks", "theta", "qkv_bias",
                             "guidance_embed", "time_factor"), {}),
    "HunYuanDiTPlain": (PlainDiT, ("in_channels", "context_dim", "hidden_size", "depth", "num_heads",
                                   "qk_norm", "qkv_bias", "num_moe_layers", "num_experts",
                                   "moe_top_k"),
                        {"qk_norm_type": "rms", "with_decoupled_ca": False,
                         "use_attention_pooling": False, "use_pos_emb": False}),
}


@dataclass
class Released:
    """One released denoiser folder: its config.yaml and its checkpoint, split by part."""

    folder: Path
    config: dict
    weights: Path

    @classmethod
    def read(cls, folder: str | Path) -> Released:
        folder = Path(folder)
        if not (folder / "config.yaml").is_file() and (why := unsupported(folder)):
            raise ValueError(why)
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"{folder}: no config.yaml (a released denoiser folder holds "
                                    f"config.yaml and one of {', '.join(WEIGHT_NAMES)})")
        weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder}: no weights (looked for {', '.join(WEIGHT_NAMES)})")
        config = read_yaml(folder / "config.yaml")
        if not isinstance(config.get("model"), dict) or "target" not in config["model"]:
            raise ConfigError(f"{folder / 'config.yaml'}: no model.target (not a released denoiser)")
        return cls(folder, config, weights)

    @property
    def target(self) -> str:
        return self.config["model"]["target"]

    @property
    def params(self) -> dict:
        return self.config["model"].get("params") or {}

    def part(self, name: str) -> dict[str, Tensor] | None:
        """One part of the checkpoint, or None; the others are not read (safetensors: only
        those keys; a ``.ckpt`` is memory-mapped, so only this part's bytes are touched)."""
        if self.weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(self.weights), "pt") as handle:
                prefix = f"{name}."
                return {k[len(prefix):]: handle.get_tensor(k) for k in handle.keys()
                        if k.startswith(prefix)} or None
        try:
            parts = torch.load(self.weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # torch.save's legacy (not zip) format cannot be memory-mapped
            parts = torch.load(self.weights, map_location="cpu", weights_only=True)
        return parts.get(name)

    def parts(self) -> dict[str, dict[str, Tensor]]:
        """{"model": ..., "vae": ..., "conditioner": ...} (the parts the checkpoint has)."""
        if self.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(self.weights))
            parts: dict[str, dict[str, Tensor]] = {}
            for key, value in flat.items():
                part, _, name = key.partition(".")
                parts.setdefault(part, {})[name] = value
        else:
            parts = torch.load(self.weights, map_location="cpu", weights_only=True)
        unknown = sorted(set(parts) - set(PARTS))
        if "model" not in parts or unknown:
            raise ValueError(f"{self.weights}: expected the parts {', '.join(PARTS)}, found "
                             f"{', '.join(sorted(parts))}")
        return parts


STEP1X3D = ("fine-tuning from it is not supported: ViLearn has neither its VAE "
            "(MichelangeloAutoencoder: no latents of it can be made) nor its image encoder "
            "(DINOv2 with registers, its register tokens dropped). Supported: its denoiser's weights "
            "(transformer/diffusion_pytorch_model.safetensors) load into an MMDiT with model preset "
            "step1x-3d through vilearn.dit.load_released, in Python; init.dit reads Hunyuan3D-2.0 "
            "and 2.1 DiT folders (config.yaml + model.fp16.safetensors / .ckpt) and vilearn export's")


def unsupported(folder: Path) -> str | None:
    """Why ``folder`` (without config.yaml) is a release ``init.dit`` cannot read, when it is one
    it recognises: Step1X-3D's diffusers pipeline folder (``Step1X-3D-Geometry-1300m``:
    model_index.json, transformer/, vae/, visual_encoder/, ...), its transformer/ subfolder
    (FluxDenoiser's config.json), or another diffusers pipeline."""
    index = next((f / "model_index.json" for f in (folder, folder.parent)
                  if (f / "model_index.json").is_file()), None)
    name = read_json(index).get("_class_name", "") if index is not None else ""
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if "Step1X3D" in name or {"num_single_layers", "condition_dim"} <= set(config):
        return f"{folder} is a Step1X-3D release ({name or 'its FluxDenoiser'}); {STEP1X3D}"
    if index is not None:
        return (f"{folder} is a diffusers pipeline folder ({name or index}), not a released "
                "Hunyuan3D-2 DiT folder (config.yaml + model.fp16.safetensors / .ckpt)")
    return None


def init_from_released(model: Denoiser, folder: str | Path, conditioner: bool = True) -> dict:
    """Load a released folder's weights into ``model`` (strict); returns a report.

    The report: ``dit`` and ``weights`` (the paths), ``new`` (the denoiser's parameters the
    checkpoint does not have, left at their initial values: VAPE's own), ``conditioner`` (whether
    the image encoder's weights were taken from the checkpoint) and ``conditioner_differs``
    (whether they differ from those of ``conditioner.model``).
    """
    try:
        released = Released.read(folder)
        check_architecture(released, model)
        parts = released.parts()
        new = load_released(model.dit, parts["model"])
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"init.dit: {error}") from error
    took, differs = False, False
    if conditioner and "conditioner" in parts and model.conditioner.config.kind == "dinov2":
        differs = load_conditioner(model, parts["conditioner"], released.weights)
        took = True
    return {"dit": str(released.folder), "weights": str(released.weights), "new": new,
            "conditioner": took, "conditioner_differs": differs}


def check_architecture(released: Released, model: Denoiser) -> None:
    """The released denoiser class must be the model's, with the model's params (each difference
    is named)."""
    name = released.target.rsplit(".", 1)[-1]
    ours, same, fixed = ARCHITECTURES.get(name, (None, (), {}))
    if ours is None or not isinstance(model.dit, ours):
        raise ConfigError(f"init.dit: {released.folder} holds a {released.target}, which does not "
                          f"load into a {type(model.dit).__name__} (set model.arch to match)")
    params, config = released.params, model.dit.config
    wrong = [f"{k}: {params[k]!r} there, {getattr(config, k)!r} here" for k in same
             if k in params and params[k] != getattr(config, k)]
    wrong += [f"{k}: {params[k]!r} there, only {v!r} is implemented" for k, v in fixed.items()
              if k in params and params[k] != v]
    if getattr(config, "time_embedding", "hunyuan3d-2") != "hunyuan3d-2":
        wrong.append(f"model.time_embedding: {config.time_embedding!r} here, {name} has hunyuan3d-2's")
    axes = params.get("axes_dim")  # Hunyuan3DDiT's RoPE axes: one, the head dimension
    if axes is not None and list(axes) != [config.head_dim]:
        wrong.append(f"axes_dim: {list(axes)} there, [head_dim] = [{config.head_dim}] here")
    if wrong:
        raise ConfigError(f"init.dit: {released.folder} does not fit the model section: "
                          + "; ".join(wrong))


def vae_differences(released: Released, vae, source: str, latent_norm: str) -> list[str]:
    """How ``vae`` (the VAE of ``vae=``, which made the latents) differs from the one the
    release's denoiser was trained with, as far as the release says: its checkpoint's ``vae``
    part (the decoder, or the whole VAE: each of its tensors must be ``vae``'s, float16 rounding
    aside) and, with ``latent_norm: vae``, config.yaml's ``vae.params.scale_factor``. Returns the
    differences, each naming the release's file and ``source``; empty: none the release shows."""
    problems = []
    theirs, ours = released.part("vae"), vae.state_dict()
    if theirs is not None:
        missing = sorted(set(theirs) - set(ours))
        differ = [k for k in sorted(theirs) if k in ours and (
            ours[k].shape != theirs[k].shape
            or not torch.allclose(ours[k].float(), theirs[k].float(), rtol=1e-3, atol=1e-4))]
        if differ:
            problems.append(f"{len(differ)} of the {len(theirs)} tensors of the VAE part of "
                            f"{released.weights} differ from {source}'s (e.g. {differ[0]})")
        if missing:
            problems.append(f"{len(missing)} of the {len(theirs)} tensors of the VAE part of "
                            f"{released.weights} are not in {source} (e.g. {missing[0]})")
    params = (released.config.get("vae") or {}).get("params") or {}
    scale, own = params.get("scale_factor"), vae.config.scale_factor
    if latent_norm == "vae" and scale is not None and not math.isclose(scale, own, rel_tol=1e-6):
        where = released.folder / "config.yaml"
        problems.append(f"its scale_factor is {own}, the release's {scale} ({where}: "
                        "vae.params.scale_factor), and latent_norm: vae scales the latents by it")
    return problems


def load_conditioner(model: Denoiser, state: dict[str, Tensor], where: Path) -> bool:
    """hy3dgen's ``SingleImageEncoder`` weights -> the DINOv2 of ``model.conditioner`` (strict);
    returns whether they differ from the ones it had (beyond float16 rounding)."""
    dino = {k[len(CONDITIONER_PREFIX):]: v for k, v in state.items() if k.startswith(CONDITIONER_PREFIX)}
    encoder = model.conditioner.encoder.model
    before = encoder.state_dict()
    differs = any(k not in before or before[k].shape != v.shape
                  or not torch.allclose(before[k].float(), v.float(), rtol=1e-3, atol=1e-4)
                  for k, v in dino.items())
    missing, unexpected = encoder.load_state_dict(dino, strict=False)
    if missing or unexpected or len(dino) != len(state):
        raise ConfigError(f"init.dit: the conditioner weights of {where} do not fit conditioner.model "
                          f"{model.conditioner.config.model!r} (missing {sorted(missing)[:3]}, unexpected "
                          f"{sorted(unexpected)[:3]}); set init.conditioner: false to keep its own")
    return differs


def export_released(model: Denoiser, dit_state: dict[str, Tensor], init: str | Path,
                    vae_state: dict[str, Tensor] | None, out: str | Path,
                    half: bool = True, note: dict | None = None) -> Path:
    """Write ``out`` as a released folder like ``init``: its config.yaml, and a checkpoint of the
    same kind (safetensors or ckpt) holding ``dit_state`` (the denoiser, in the released names),
    the conditioner's DINOv2 and ``vae_state`` (else the init checkpoint's VAE part).

    ``half``: float16 weights (``model.fp16.*``, as released), else float32 (``model.*``).
    Tensors the released class does not have (VAPE's, ``vape.*``) go to ``vape.safetensors``.
    ``note`` is written to ``vilearn.json``. Returns the checkpoint's path.
    """
    released, out = Released.read(init), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; export into a new folder")
    parts = {"model": {k: v for k, v in dit_state.items() if not k.startswith("vape.")}}
    vape = {k: v for k, v in dit_state.items() if k.startswith("vape.")}
    if vae_state is None:
        vae_state = released.parts().get("vae")
    if vae_state is not None:
        parts["vae"] = vae_state
    if model.conditioner.config.kind == "dinov2":
        parts["conditioner"] = {CONDITIONER_PREFIX + k: v
                                for k, v in model.conditioner.encoder.model.state_dict().items()}
    dtype = torch.float16 if half else torch.float32
    parts = {part: {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
             for part, tensors in parts.items()}
    stem = "model.fp16" if half else "model"
    if released.weights.suffix == ".safetensors":
        path = out / f"{stem}.safetensors"
        save_safetensors(path, {f"{part}.{k}": v for part, tensors in parts.items()
                                for k, v in tensors.items()})
    else:
        path = out / f"{stem}.ckpt"
        with atomic_open(path) as handle:
            torch.save({part: {k: v.contiguous() for k, v in t.items()} for part, t in parts.items()},
                       handle)
    if vape:
        save_safetensors(out / "vape.safetensors", vape)
    write_text(out / "config.yaml", (released.folder / "config.yaml").read_text())
    write_json(out / "vilearn.json", {"init": str(released.folder), **(note or {})})
    return path
