"""Released denoiser weights -> our modules, strictly (pure: no file access)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


def denoiser_state(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The denoiser's tensors from a Hunyuan3D-2 / 2.1 checkpoint dict: ``{"model": {...}}``, keys
    prefixed ``model.`` (other prefixes, e.g. ``vae.``, dropped), or the bare state dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        return dict(checkpoint["model"])
    if any(k.startswith("model.") for k in checkpoint):
        return {k[len("model.") :]: v for k, v in checkpoint.items() if k.startswith("model.")}
    return dict(checkpoint)


def load_strict(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """``model.load_state_dict(state, strict=True)`` except that VAPE's own parameters
    (``vape.*``, which no released model has) may be absent: they keep their initial values.

    Returns the VAPE parameter names left as they were; raises ``ValueError`` naming the first
    missing and unexpected keys otherwise.
    """
    own = model.state_dict()
    vape_keys = [k for k in own if k.startswith("vape.")]
    missing = sorted(set(own) - set(state) - set(vape_keys))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match this {type(model).__name__} config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    left = [k for k in vape_keys if k not in state]
    model.load_state_dict({**{k: own[k] for k in left}, **state}, strict=True)
    return left
