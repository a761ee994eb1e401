"""Checkpoints: a folder per step of safetensors files, written atomically, rotated, with a
``latest`` pointer.

Layout::

    RUN/checkpoints/step-0000200/{model,ema,optimizer,rng}.safetensors + meta.json
    RUN/checkpoints/latest          text file: "step-0000200"

A checkpoint folder is assembled under a temporary name and renamed into place, then the
pointer is replaced atomically; a crash leaves either the previous checkpoint or the new one.
Nothing is pickled: optimizer state is flattened into tensors plus JSON (``optimizer_to_tensors``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vilearn.io import read_json, save_safetensors, write_json, write_text

POINTER = "latest"


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(folder: str | Path, step: int, groups: dict[str, dict[str, torch.Tensor]],
                    meta: dict | None = None, keep: int | None = None) -> Path:
    """Write ``groups`` (name -> tensors) and ``meta`` (JSON) as checkpoint ``step``.

    ``keep``: how many step folders to retain (oldest deleted first); None keeps all.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / step_name(step)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for name, tensors in groups.items():
            save_safetensors(tmp / f"{name}.safetensors", tensors)
        write_json(tmp / "meta.json", {"step": step, **(meta or {})})
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


def rotate(folder: Path, keep: int, protect: str) -> None:
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for path in steps[:max(0, len(steps) - keep)]:
        if path.name != protect:
            shutil.rmtree(path)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names, or None if there is none yet."""
    pointer = Path(folder) / POINTER
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(groups, meta) of one checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (no meta.json)")
    groups = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    return groups, read_json(path / "meta.json")


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
