"""Which VAE made a set of latents: a content hash of its config and weights, with a readable name.

Latents, their statistics and the groupings next to them are meaningful only with the VAE that
made them, so they are filed under that VAE's identity, never under a path::

    DATASET/latents/<name>-<hash8>/vae.json   {"format", "name", "hash", "path", "vae_config",
                                               "surface_points"}: the VAE that owns the folder
    DATASET/latents/<name>-<hash8>/<N>/...    latents, stats.json, groups/ (vilearn.vae.encode)

``hash`` is the SHA-256 of the VAE's config (JSON) and of every weight (name, shape, float32
bytes, in name order): the same weights give the same folder wherever the file lives (a run,
its ``vae/`` export or a checkpoint), and a VAE retrained in place, or a second weights file in
the same folder, gets a folder of its own. ``name`` is for people: the run's folder, or a
weights file's stem (``vae-tiny-urdfs``), or ``--name`` / ``vae_name``.

``identify_vae`` is the one function every command uses to go from a VAE to its latents folder;
``claim_latents`` (the writer, ``encode``) and ``find_latents`` (every reader) check the folder's
``vae.json`` against the VAE in hand, so latents are never mixed across VAEs. Folders written
before this scheme (``latents/<name>/`` without a hash) cannot be matched to any VAE: readers
refuse them with a message to re-encode.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vilearn.config import to_dict
from vilearn.io import read_json, write_json

LATENTS_FORMAT = 2  # 1: latents/<folder name>/ without an identity
OWNER_FILE = "vae.json"
_GENERIC_STEMS = ("model", "pytorch_model", "diffusion_pytorch_model")


class LatentsError(ValueError):
    """Latents that do not belong to the VAE in hand, or that no VAE can be matched to."""


@dataclass(frozen=True)
class VAEIdentity:
    """A VAE as far as latents are concerned: readable ``name``, content ``digest`` (SHA-256,
    hex), and the absolute ``path`` it was loaded from (a record, not part of the identity)."""

    name: str
    digest: str
    path: str

    @property
    def key(self) -> str:
        """The latents folder name: ``<name>-<first 8 hex digits of the digest>``."""
        return f"{self.name}-{self.digest[:8]}"

    def to_dict(self) -> dict:
        return {"name": self.name, "hash": self.digest, "path": self.path}


def weights_digest(vae) -> str:
    """SHA-256 of a VAE's config and weights (float32 bytes, names in order), hex."""
    digest = hashlib.sha256(json.dumps(to_dict(vae.config), sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}:{tuple(array.shape)};".encode())
        digest.update(array.data)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """A folder-safe readable name (anything but letters, digits, ``._-`` becomes ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if not name:
        raise ValueError(f"VAE name {text!r}: nothing usable as a folder name")
    return name


def readable_name(path: str | Path) -> str:
    """The readable half of a latents key, from what the user pointed at.

    RUN, RUN/vae, RUN/vae/model.safetensors and RUN/checkpoints/step-N all give RUN's name; a
    weights file with a name of its own gives its stem (``vae-tiny-urdfs.safetensors`` ->
    ``vae-tiny-urdfs``); generic ``model*.safetensors`` / ``.ckpt`` files give their folder's
    name (``hunyuan3d-vae-v2-0``).
    """
    path = Path(path).resolve()
    if path.is_file():
        if path.name.split(".")[0] not in _GENERIC_STEMS:
            return safe_name(path.name.split(".")[0])
        path = path.parent
    if path.parent.name == "checkpoints":
        return safe_name(path.parent.parent.name)
    if path.name == "vae" and (path.parent / "checkpoints").is_dir():
        return safe_name(path.parent.name)
    return safe_name(path.name)


def identify_vae(vae, path: str | Path, name: str | None = None) -> VAEIdentity:
    """The identity of ``vae`` (loaded from ``path``); ``name`` overrides the readable name."""
    return VAEIdentity(safe_name(name) if name else readable_name(path), weights_digest(vae),
                       str(Path(path).resolve()))


def latents_root(dataset: str | Path, key: str | VAEIdentity) -> Path:
    """``DATASET/latents/<key>``: every token count's latents and groups of one VAE."""
    return Path(dataset) / "latents" / (key.key if isinstance(key, VAEIdentity) else key)


def _owner(folder: Path) -> dict | None:
    path = folder / OWNER_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as error:
        raise LatentsError(f"{path}: unreadable ({error}); remove {folder} and re-encode") from error
    return data if isinstance(data, dict) else None


def _check_owner(folder: Path, owner: dict, identity: VAEIdentity) -> None:
    if owner.get("hash") != identity.digest:
        raise LatentsError(
            f"{folder}: these latents were made by VAE {owner.get('path')!r} (hash "
            f"{str(owner.get('hash'))[:12]}), not by {identity.path!r} (hash {identity.digest[:12]}); "
            f"they cannot be used with it. Remove the folder or choose another --name / vae_name")


def legacy_folders(dataset: str | Path) -> list[Path]:
    """Latents folders written before latents were keyed by the VAE's identity."""
    root = Path(dataset) / "latents"
    if not root.is_dir():
        return []
    legacy = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            owner = _owner(folder)
        except LatentsError:
            owner = None
        if owner is None or "hash" not in owner:
            if owner is not None or any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
                legacy.append(folder)
    return legacy


def claim_latents(dataset: str | Path, identity: VAEIdentity, vae_config: dict,
                  encoder_input: dict) -> Path:
    """The writer's side (``encode``): the folder of ``identity``'s latents, made on first use
    with its ``vae.json``; one that holds latents must belong to this VAE and record the same
    ``encoder_input`` (``surface_points`` and ``input``: what the encoder read)."""
    folder = latents_root(dataset, identity)
    owner = _owner(folder)
    if owner is not None and any(folder.glob("*/*.safetensors")):  # else nothing to keep apart
        if "hash" not in owner:
            raise LatentsError(f"{folder}: written by an older vilearn without the VAE's identity; "
                               f"remove it and encode again")
        _check_owner(folder, owner, identity)
        for key, value in encoder_input.items():
            if key in owner and owner[key] != value:
                raise LatentsError(f"{folder / OWNER_FILE}: these latents were made from another "
                                   f"encoder input ({key}: {owner[key]} here, {value} now); use the "
                                   f"same settings (--surface-points) or another --name")
        return folder
    write_json(folder / OWNER_FILE, {"format": LATENTS_FORMAT, **identity.to_dict(),
                                     "vae_config": vae_config, **encoder_input})
    return folder


def find_latents(dataset: str | Path, identity: VAEIdentity) -> Path:
    """The readers' side (``group``, ``train``, ``evaluate``, ...): ``identity``'s latents
    folder in ``dataset``, checked to belong to it.

    Raises:
        FileNotFoundError: no latents of this VAE (old-style folders are named, to re-encode).
        LatentsError: the folder's ``vae.json`` records another VAE.
    """
    folder = latents_root(dataset, identity)
    owner = _owner(folder)
    if owner is None:
        message = (f"dataset {str(dataset)!r}: no latents of VAE {identity.path!r} ({folder} is "
                   f"missing; run 'vilearn encode {dataset} --vae {identity.path}' first)")
        legacy = legacy_folders(dataset)
        if legacy:
            message += (f". {', '.join(str(p) for p in legacy)}: written by an older vilearn that "
                        f"did not record which VAE made them, so they cannot be used; re-encode "
                        f"(and re-group) with the VAE, then delete the old folder")
        raise FileNotFoundError(message)
    _check_owner(folder, owner, identity)
    return folder


def load_identified(path: str | Path, name: str | None = None, device: str | torch.device = "cpu"):
    """(VAE in eval mode, its ``VAEIdentity``) from a run, checkpoint or weights path."""
    from vilearn.vae.resolve import resolve_vae

    vae = resolve_vae(path, device=device)
    return vae, identify_vae(vae, path, name)
