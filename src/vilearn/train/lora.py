"""LoRA fine-tuning of the denoiser with peft (``train.lora``).

``apply_lora`` puts peft LoRA adapters (``inject_adapter_in_model``) on the linear layers of
``model.dit`` that ``train.lora.targets`` name, and freezes the rest of the denoiser except
VAPE's own parameters and the layers the init weights lacked. Targets are the denoiser class's
``LAYER_GROUPS`` (role -> regular expression over its module names, so one config works for
every architecture) or regular expressions of their own.

A LoRA run keeps only its trained tensors in its checkpoints (the base comes from ``init.dit``
again when the run is loaded), and its EMA adapters in peft's layout::

    RUN/adapter/adapter_config.json         peft's LoraConfig (target_modules: full names)
    RUN/adapter/adapter_model.safetensors   base_model.model.<module>.lora_{A,B}.weight
    RUN/adapter/extra.safetensors           the other trained tensors (VAPE's, new layers,
                                            a jointly trained image encoder), when there are any

so ``peft.PeftModel.from_pretrained(denoiser, RUN/adapter)`` applies them to the released
denoiser class itself. ``merged_dit_state`` folds the adapters into the base weights.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path

from torch import Tensor, nn

from vilearn.config import ConfigError
from vilearn.io import save_safetensors, write_json
from vilearn.train.config import LoRAConfig
from vilearn.train.denoiser import Denoiser

ADAPTER_PREFIX = "base_model.model."  # peft's PeftModel key prefix


def target_modules(dit: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the linear layers ``targets`` select, in module order."""
    groups = type(dit).LAYER_GROUPS
    linear = [name for name, module in dit.named_modules() if isinstance(module, nn.Linear)]
    chosen: set[str] = set()
    for i, target in enumerate(targets):
        try:
            pattern = re.compile(groups.get(target, target))
        except re.error as error:
            raise ConfigError(f"train.lora.targets[{i}]: {target!r} is neither a layer group "
                              f"({', '.join(groups)}) nor a regular expression ({error})") from None
        hits = [name for name in linear if pattern.fullmatch(name)]
        if not hits:
            raise ConfigError(f"train.lora.targets[{i}]: {target!r} matches no linear layer of "
                              f"{type(dit).__name__} (layer groups: {', '.join(groups)})")
        chosen.update(hits)
    return [name for name in linear if name in chosen]


def peft_config(settings: LoRAConfig, modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=modules)


def apply_lora(model: Denoiser, settings: LoRAConfig, keep_trainable: Iterable[str] = ()) -> None:
    """Adapters on ``model.dit``; its other tensors frozen and left out of ``trainable_state``
    (``model.frozen``), except ``vape.*`` and ``keep_trainable`` (names in ``model.dit``)."""
    from peft import inject_adapter_in_model

    dit = model.dit
    config = peft_config(settings, target_modules(dit, settings.targets))
    inject_adapter_in_model(config, dit)  # freezes every non-adapter parameter of dit
    keep = set(keep_trainable)
    for name, param in dit.named_parameters():
        if name.startswith("vape.") or name in keep:
            param.requires_grad_(True)
    trained = {name for name, param in dit.named_parameters() if param.requires_grad}
    model.frozen = {f"dit.{name}" for name in dit.state_dict() if name not in trained}
    model.lora_config = config


def adapter_weights(dit: nn.Module, dit_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapter tensors of a denoiser state dict (names in ``dit``), in peft's file layout."""
    from peft import get_peft_model_state_dict

    return {ADAPTER_PREFIX + k: v for k, v in get_peft_model_state_dict(dit, dit_state).items()}


def save_adapter(folder: str | Path, model: Denoiser, state: dict[str, Tensor]) -> None:
    """``state`` (the whole model's, e.g. EMA-averaged) -> ``folder`` in peft's layout."""
    folder = Path(folder)
    dit_state = {k[len("dit."):]: v for k, v in state.items() if k.startswith("dit.")}
    save_safetensors(folder / "adapter_model.safetensors", adapter_weights(model.dit, dit_state))
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in model.lora_config.to_dict().items()}
    write_json(folder / "adapter_config.json", config)
    extra = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    if extra:
        save_safetensors(folder / "extra.safetensors", {k: state[k] for k in extra})


def merged_dit_state(dit: nn.Module) -> dict[str, Tensor]:
    """``dit``'s state dict with every adapter merged into its layer, in the layers' own names
    (what the denoiser class without adapters loads)."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(dit)
    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return {k.replace(".base_layer.", "."): v for k, v in merged.state_dict().items() if ".lora_" not in k}
