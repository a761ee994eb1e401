"""Multi-process training on the CPU: ``accelerate launch --num_processes 2`` (DDP over gloo)
against one process with the same global batch: the same loss curve (within float tolerance),
the same items at every step, checkpoints from rank 0 only, and a resume that may change the
process count (batch sizes are global, and every draw of a sample is a function of its place in
the data stream, not of the process that serves it)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_train import make_config, train_losses
from vilearn.config import to_dict

SCRIPT = Path(__file__).parent / "distributed_run.py"
BATCH = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: Path, out: Path, records: Path, processes: int, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, str(SCRIPT), str(config), str(out), str(records), *extra]
    if processes > 1:  # the torchrun launcher; ACCELERATE_USE_CPU makes it DDP over gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", str(free_port()), *command[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def records(folder: Path) -> dict[int, list[dict]]:
    return {int(p.stem.split("-")[1]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(folder.glob("rank-*.jsonl"))}


def items_by_step(rows: dict[int, list[dict]], steps: int) -> list[list[tuple[int, int]]]:
    """Per step, the (index, seed) pairs all processes served, in global batch order."""
    per_rank = BATCH // len(rows)
    served = {r: [(x["index"], x["seed"]) for x in rs if x["kind"] == "item"] for r, rs in rows.items()}
    return [[item for r in sorted(served) for item in served[r][s * per_rank:(s + 1) * per_rank]]
            for s in range(steps)]


def saves(rows: dict[int, list[dict]]) -> dict[int, list[int]]:
    return {r: [x["step"] for x in rs if x["kind"] == "save"] for r, rs in rows.items()}


def config_file(encoded, tmp_path: Path, steps: int = 4) -> Path:
    config = make_config(encoded, stages=[{"tokens": 32, "steps": steps, "batch_size": BATCH}],
                         train={"log_every": 1, "ckpt_every": 2, "keep_checkpoints": 5},
                         val={"every": 0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def assert_same_curve(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([x for _, x in a], [x for _, x in b], rtol=1e-5, atol=1e-7)


def test_two_processes_match_one_with_the_same_global_batch(encoded, tmp_path):
    config = config_file(encoded, tmp_path)
    launch(config, tmp_path / "one", tmp_path / "one-records", 1)
    launch(config, tmp_path / "two", tmp_path / "two-records", 2)
    one, two = records(tmp_path / "one-records"), records(tmp_path / "two-records")
    assert sorted(two) == [0, 1]
    assert_same_curve(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"))
    assert train_losses(tmp_path / "one")[0][1] != train_losses(tmp_path / "one")[1][1]
    assert items_by_step(two, 4) == items_by_step(one, 4)
    assert saves(two) == {0: [2, 4], 1: []} and saves(one) == {0: [2, 4]}
    names = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert names == ["latest", "step-0000002", "step-0000004"]


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_with_another_process_count_continues_the_same_curve(encoded, tmp_path, first, then):
    config = config_file(encoded, tmp_path)
    launch(config, tmp_path / "whole", tmp_path / "whole-records", 1)
    launch(config, tmp_path / "split", tmp_path / "split-a", first, "--max-steps", "2")
    launch(config, tmp_path / "split", tmp_path / "split-b", then, "--resume", "latest")
    assert_same_curve(train_losses(tmp_path / "split"), train_losses(tmp_path / "whole"))
    resumed = items_by_step(records(tmp_path / "split-b"), 2)
    assert resumed == items_by_step(records(tmp_path / "whole-records"), 4)[2:]


def test_sharded_strategies_are_refused_with_a_clear_error():
    """FSDP does not run on the CPU (accelerate turns a CPU launch with --use_fsdp into DDP),
    and the trainer does not handle sharded parameters yet: it says so before any step."""
    from accelerate.utils import DistributedType

    from vilearn.config import ConfigError
    from vilearn.train.trainer import check_parallelism

    for kind in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.NO):
        check_parallelism(kind)
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match="sharded training is not supported yet"):
            check_parallelism(kind)


@pytest.mark.parametrize("name, value, flag", [("ACCELERATE_USE_FSDP", "true", "--use_fsdp"),
                                               ("ACCELERATE_USE_FSDP", "True", "--use_fsdp"),
                                               ("ACCELERATE_USE_DEEPSPEED", "1", "--use_deepspeed")])
def test_a_sharded_launch_is_refused_from_the_launchers_environment(monkeypatch, tmp_path, name, value, flag):
    """``accelerate launch --use_fsdp`` sets ACCELERATE_USE_FSDP=true (accelerate's own plugin
    code sets "True"), and on a CPU accelerate then quietly runs DDP (MULTI_CPU): the trainer
    reads the launcher's variables and refuses, before it reads or writes anything."""
    from accelerate.utils import DistributedType

    from vilearn.config import ConfigError
    from vilearn.train.config import TrainConfig
    from vilearn.train.trainer import check_parallelism, train

    message = rf"{name}={value} \(accelerate launch {flag}\): sharded training is not supported yet"
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        check_parallelism(DistributedType.MULTI_CPU)
    with pytest.raises(ConfigError, match=message):  # an empty config: refused before its checks
        train(TrainConfig(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv(name, "false")
    check_parallelism(DistributedType.MULTI_CPU)
