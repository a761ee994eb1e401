"""Checkpoints: a folder per step of safetensors files, written atomically, rotated, with a
``latest`` pointer, and verified completely before use.

Layout::

    RUN/checkpoints/step-0000200/{model,ema,optimizer,rng}.safetensors + meta.json
    RUN/checkpoints/latest          text file: "step-0000200"

A checkpoint folder is assembled under a temporary name and renamed into place, then the
pointer is replaced atomically; a crash leaves either the previous checkpoint or the new one.
``meta.json`` records each file's size and SHA-256, so a truncated or damaged file is found
before any of it is used (``CheckpointError`` names the file); ``load_latest`` then falls back
to the newest intact checkpoint with a warning naming the bad one. Nothing is pickled: optimizer
state is flattened into tensors plus JSON (``optimizer_to_tensors``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Collection
from pathlib import Path

import torch

from vilearn.io import (
    clean_stale_tmp,
    file_sha256,
    make_tmp_dir,
    read_json,
    save_safetensors,
    write_json,
    write_text,
)

POINTER = "latest"


class CheckpointError(ValueError):
    """A checkpoint is incomplete or damaged; the message names the file and the problem."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one."""


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(folder: str | Path, step: int, groups: dict[str, dict[str, torch.Tensor]],
                    meta: dict | None = None, keep: int | None = None) -> Path:
    """Write ``groups`` (name -> tensors) and ``meta`` (JSON) as checkpoint ``step``.

    ``keep``: how many step folders to retain (oldest deleted first); None keeps all.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(folder)
    final = folder / step_name(step)
    tmp = make_tmp_dir(folder, final.name)
    try:
        files = {}
        for name, tensors in groups.items():
            digest = save_safetensors(tmp / f"{name}.safetensors", tensors)
            files[name] = {"bytes": (tmp / f"{name}.safetensors").stat().st_size, "sha256": digest}
        write_json(tmp / "meta.json", {**(meta or {}), "step": step, "files": files})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text(folder / POINTER, final.name + "\n")
    if keep is not None:
        rotate(folder, keep, protect=final.name)
    return final


def step_folders(folder: str | Path) -> list[Path]:
    """The checkpoint folders under ``folder``, oldest first (temporary ones left out)."""
    return sorted(p for p in Path(folder).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def rotate(folder: Path, keep: int, protect: str) -> None:
    steps = step_folders(folder)
    for path in steps[:max(0, len(steps) - keep)]:
        if path.name != protect:
            shutil.rmtree(path)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names (else the newest step folder), or None if
    there is none yet. Not verified: ``load_latest`` is what reads one."""
    candidates = _candidates(Path(folder))
    return candidates[0] if candidates else None


def _candidates(folder: Path) -> list[Path]:
    """Checkpoints to try, best first: the pointer's, then the step folders newest first."""
    steps = step_folders(folder)[::-1]
    pointer = folder / POINTER
    if pointer.is_file():
        named = folder / pointer.read_text().strip()
        if named.is_dir():
            steps = [named] + [p for p in steps if p != named]
        elif steps:
            warnings.warn(CheckpointWarning(f"{pointer} names {named.name}, which does not exist; "
                                            f"using {steps[0]}"), stacklevel=3)
    return steps


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a checkpoint folder (even a damaged one)."""
    path = Path(path)
    return path.is_dir() and ((path / "meta.json").exists() or (path / "ema.safetensors").exists())


def read_meta(path: str | Path) -> dict:
    """A checkpoint folder's meta.json, checked: a mapping with an integer ``step``."""
    file = Path(path) / "meta.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (not a checkpoint folder, or an incomplete one)")
    try:
        meta = read_json(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{file}: unreadable ({error})") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{file}: damaged (no integer 'step')")
    return meta


def load_checkpoint(path: str | Path, groups: Collection[str] | None = None
                    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(groups, meta) of one checkpoint folder, verified before use.

    ``groups``: the tensor files to load, each required (None: every file the checkpoint has).
    Each file's size and SHA-256 are checked against ``meta.json`` (checkpoints written before
    these were recorded are checked for readability only).

    Raises:
        CheckpointError: naming the missing, truncated or damaged file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    recorded = meta.get("files") or {}
    names = list(groups) if groups is not None else sorted(
        set(recorded) | {p.stem for p in path.glob("*.safetensors")})
    loaded = {}
    for name in names:
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        expected = recorded.get(name)
        if expected is not None:
            size = file.stat().st_size
            if size != expected["bytes"]:
                raise CheckpointError(f"{file}: truncated or damaged ({size} bytes, "
                                      f"{expected['bytes']} written)")
            if file_sha256(file) != expected["sha256"]:
                raise CheckpointError(f"{file}: damaged (its SHA-256 differs from the one written)")
        try:
            loaded[name] = load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file}: unreadable ({error})") from error
    return loaded, meta


def load_latest(folder: str | Path, groups: Collection[str] | None = None
                ) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict] | None:
    """(path, groups, meta) of the newest intact checkpoint under ``folder``; None if there is
    no checkpoint at all. A damaged one is skipped with a ``CheckpointWarning`` naming it.

    Raises:
        CheckpointError: checkpoints exist but none is intact.
    """
    candidates = _candidates(Path(folder))
    problems = []
    for path in candidates:
        try:
            loaded, meta = load_checkpoint(path, groups)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            warnings.warn(CheckpointWarning(f"skipped damaged checkpoint(s): {'; '.join(problems)}; "
                                            f"using {path}"), stacklevel=2)
        return path, loaded, meta
    if problems:
        raise CheckpointError(f"{folder}: no intact checkpoint ({'; '.join(problems)})")
    return None


def optimizer_to_tensors(state: dict) -> dict[str, torch.Tensor]:
    """torch optimizer state_dict -> flat tensors; non-tensor parts go into a JSON tensor."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    extra = json.dumps({"param_groups": state["param_groups"], "scalars": scalars})
    tensors["__json__"] = torch.frombuffer(bytearray(extra.encode()), dtype=torch.uint8).clone()
    return tensors


def optimizer_from_tensors(tensors: dict[str, torch.Tensor]) -> dict:
    extra = json.loads(bytes(tensors["__json__"].tolist()).decode())
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in extra["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    # JSON turns tuples (AdamW's betas) into lists; only "params" is a list in torch.
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in extra["param_groups"]]
    return {"state": state, "param_groups": groups}
