"""The trainer's DataLoader: workers, their prefetch and pinned memory come from the config and
the device and reach torch's DataLoader; bad values are refused naming the key."""

import re

import pytest
import torch
import torch.utils.data

from test_train import make_config
from vilearn.config import ConfigError, load_config
from vilearn.train.config import LoopConfig, TrainConfig
from vilearn.train.trainer import _loader, train


@pytest.fixture
def loader_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every DataLoader made while the test runs (it still loads)."""
    calls = []

    class Recorded(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            calls.append({k: v for k, v in kwargs.items() if k not in ("batch_sampler", "generator")})
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recorded)
    return calls


def test_train_gives_the_loader_persistent_workers_and_the_configured_prefetch(encoded, tmp_path,
                                                                                loader_calls):
    config = make_config(encoded, stages=[{"tokens": 32, "steps": 2, "batch_size": 2}],
                         **{"train.workers": 1, "train.prefetch_factor": 3, "val.every": 0})
    train(config, tmp_path / "run")
    assert loader_calls == [{"num_workers": 1, "pin_memory": False, "persistent_workers": True,
                             "prefetch_factor": 3}]  # on this CPU: nothing to pin for


def test_memory_is_pinned_for_a_gpu_and_workers_zero_takes_no_worker_settings(loader_calls):
    items, batches = list(range(4)), [[0, 1], [2, 3]]
    with pytest.warns(UserWarning, match="pin_memory"):  # no GPU here: torch says it will not pin
        assert [b.tolist() for b in _loader(items, batches, 0, seed=0, prefetch=4, device="cuda")] == batches
    assert [b.tolist() for b in _loader(items, batches, 0, seed=0, prefetch=4, device="cpu")] == batches
    assert loader_calls == [{"num_workers": 0, "pin_memory": True}, {"num_workers": 0, "pin_memory": False}]


@pytest.mark.parametrize("value, expected", [("0", "0 is out of range, must be in [1, 16]"),
                                             ("17", "17 is out of range, must be in [1, 16]"),
                                             ("two", "expected an integer, got 'two'")])
def test_a_bad_prefetch_factor_is_refused_naming_the_key(value, expected):
    with pytest.raises(ConfigError, match=re.escape(f"train.prefetch_factor: {expected}")):
        load_config(TrainConfig, "dit-tiny", [f"train.prefetch_factor={value}"])
    with pytest.raises(ValueError, match="prefetch_factor must be in"):
        LoopConfig(prefetch_factor=0)
