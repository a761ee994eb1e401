"""One call from meshes to a dataset the diffusion trainer can read: prepare, encode, group.

Each step resumes (finished shapes, latents and groups are kept), so calling it again on the
same folder costs a scan. Used by ``vilearn demo`` and ``vilearn bench convergence``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PACKAGED_VAE = ASSETS / "vae-tiny-urdfs.safetensors"


def resolve_vae_path(vae: str) -> Path:
    """``packaged`` -> the committed tiny random_urdfs VAE; the name of another packaged VAE
    (``vae-tiny-furniture``: ``assets/<name>.safetensors``) -> that one; else a path."""
    if vae == "packaged":
        if not PACKAGED_VAE.is_file():
            raise FileNotFoundError(f"no packaged tiny VAE at {PACKAGED_VAE}; train one with "
                                    "'vilearn train-vae DATASET --config vae-tiny --out RUN' and pass it")
        return PACKAGED_VAE
    asset = ASSETS / f"{vae}.safetensors"
    return asset if "/" not in vae and asset.is_file() else Path(vae)


def cache_condition_features(config, say: Callable[[str], None] = print, device: str = "cpu") -> str:
    """Run a training config's frozen image encoder once over its dataset (``conditioner.cached``:
    ``vilearn cache-features``, resumable); returns the features folder name."""
    from vilearn.dit.conditioner import build_conditioner
    from vilearn.train.features import cache_features

    conditioner = build_conditioner(config.conditioner).to(device)
    say(f"cache {config.conditioner.kind} features of {config.dataset}")
    name, summary = cache_features(config.dataset, conditioner, batch=32)
    if summary.failed:
        say(f"  {len(summary.failed)} shape(s) without features (skipped in training): "
            + ", ".join(f"{k}: {v}" for k, v in list(summary.failed.items())[:3]))
    return name


def default_device() -> str:
    """Where evaluation and the benchmark run the VAE and the MM-DiT: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_dataset(root: str | Path, source: str, limit: int | None, prepare_config: str,
                  vae_path: str | Path, vae_name: str, tokens: list[int], workers: int = 0,
                  say: Callable[[str], None] = print, on_shape: Callable[..., None] | None = None,
                  device: str = "cpu", frame: str = "object"):
    """prepare ``source`` into ``root`` (with ``frame="view"``: into ``root``-object, then its
    view-frame dataset into ``root``, see ``vilearn.data.view_frame``), encode at ``tokens``
    with the VAE, group every view and write the grouping statistics (whose mean visible
    fraction sets the inference partition).

    ``on_shape`` is called once per shape by the encoding and again by the grouping pass.
    Shapes that fail a step are reported through ``say`` (file and reason) and left out.
    Returns the loaded VAE (eval mode), for callers that decode afterwards, and its identity
    (``identity.key`` names the latents folder; ``vae_name`` is its readable part).
    """
    from vilearn.config import load_config
    from vilearn.data.dataset import PreparedDataset
    from vilearn.data.prepare import PrepareConfig, prepare_dataset
    from vilearn.grouping.run import group_dataset
    from vilearn.grouping.stats import write_stats
    from vilearn.grouping.store import groups_dir
    from vilearn.vae.encode import encode_dataset
    from vilearn.vae.identity import load_identified

    if frame not in ("object", "view"):
        raise ValueError(f"frame must be 'object' or 'view', got {frame!r}")
    root = Path(root)
    prepared = root.with_name(root.name + "-object") if frame == "view" else root
    say(f"prepare {limit or 'all'} shapes of {source} -> {prepared}")
    summary = prepare_dataset(source, prepared, load_config(PrepareConfig, prepare_config),
                              workers=workers or os.cpu_count() or 1, limit=limit)
    if summary.ok == 0:
        raise ValueError(f"{source}: no shape could be prepared")
    if frame == "view":
        from vilearn.data.view_frame import derive_view_frame

        say(f"view frame: one shape per view -> {root}")
        derive_view_frame(prepared, root)
    vae, identity = load_identified(vae_path, vae_name, device)
    say(f"encode and group at {tokens} tokens with {vae_path} -> latents/{identity.key}")
    encoded = encode_dataset(root, vae, identity, tokens, on_shape=on_shape)
    grouped = group_dataset(root, vae, identity, tokens, on_shape=on_shape)
    for step, failed in (("encode", encoded.failed), ("group", grouped.failed)):
        for key, reason in failed.items():
            say(f"{step} failed: {key}: {reason}")
    ids = PreparedDataset(root).ids()
    for n in tokens:
        write_stats(groups_dir(root, identity.key, n), ids)
    return vae, identity
