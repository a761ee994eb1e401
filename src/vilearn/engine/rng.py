"""Capture and restore the global RNG states (python, numpy, torch CPU and CUDA) as tensors."""

from __future__ import annotations

import json
import random

import numpy as np
import torch


def capture_rng_state() -> dict[str, torch.Tensor]:
    """All global RNG states as uint8 tensors (safetensors-friendly)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what we capture)
    state["numpy"] = _json_tensor([np_state[0], np_state[1].tolist(), *np_state[2:]])
    state["python"] = _json_tensor(_listify(random.getstate()))
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = sorted((int(k.split(".")[1]), v) for k, v in state.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        # a run resumed on fewer GPUs than it was saved from restores those it has
        for index, value in cuda[:torch.cuda.device_count()]:
            torch.cuda.set_rng_state(value, index)
    kind, keys, *rest = _from_json_tensor(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    random.setstate(_tuplify(_from_json_tensor(state["python"])))


def _json_tensor(data) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(data).encode()), dtype=torch.uint8).clone()


def _from_json_tensor(tensor: torch.Tensor):
    return json.loads(bytes(tensor.tolist()).decode())


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
