"""vilearn.train: checkpoints, rotation, optimizer/RNG/EMA state round trips, LR schedule."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vilearn.engine import EMA, JSONLLogger, capture_rng_state, lr_factor, restore_rng_state
from vilearn.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)


def test_checkpoint_rotation_and_latest_pointer(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}},
                        meta={"note": "x"}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000030", "step-0000040"]
    latest = latest_checkpoint(tmp_path)
    groups, meta = load_checkpoint(latest)
    assert meta["step"] == 40 and meta["note"] == "x" and groups["model"]["w"].tolist() == [40.0, 40.0]
    assert meta["files"]["model"]["bytes"] == (latest / "model.safetensors").stat().st_size
    assert not list(tmp_path.glob("*.tmp"))


def test_optimizer_state_round_trip_is_exact():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    restored = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1.0)
    restored.load_state_dict(optimizer_from_tensors(optimizer_to_tensors(opt.state_dict())))
    a, b = opt.state_dict(), restored.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][key]))


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.rand(10)
    np.random.rand(10)  # noqa: NPY002
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_ema_tracks_the_parameters():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(100):
        ema.update(model, step)
    assert torch.allclose(ema.averaged(model)["weight"], torch.ones(1, 2))
    with pytest.raises(KeyError):
        ema.load_state_dict({"bogus": torch.zeros(1)})


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, decay="linear", min_ratio=0.0) == pytest.approx(0.5)


def test_jsonl_logger_truncates_on_resume(tmp_path):
    log = JSONLLogger(tmp_path / "log.jsonl")
    for step in range(5):
        log.log({"step": step, "loss": float(step)})
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [0, 1, 2]
