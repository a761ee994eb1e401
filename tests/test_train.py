"""The diffusion trainer: a CLI run and generate, exact resume, stage switching, SIGTERM,
and errors at start that name the problem."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from train_configs import with_changes
from vilearn.cli import app
from vilearn.config import ConfigError, load_config
from vilearn.engine.checkpoint import latest_checkpoint, load_checkpoint
from vilearn.train.config import TrainConfig
from vilearn.train.trainer import train


def make_config(root: Path, **changes) -> TrainConfig:
    data = {
        "dataset": str(root / "data"),
        "vae": str(root / "vae"),
        "model": {"preset": "tiny", "vape": "va-rope"},
        "conditioner": {"kind": "patch", "image_size": 32, "patch_size": 16, "width": 64,
                        "depth": 1, "num_heads": 4},
        "stages": [{"tokens": 32, "steps": 4, "batch_size": 2}, {"tokens": 64, "steps": 4, "batch_size": 3}],
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"log_every": 1, "ckpt_every": 2, "keep_checkpoints": 2},
        "val": {"every": 4, "shapes": 2, "timesteps": 2},
    }
    path = root / f"config-{len(list(root.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(with_changes(data, changes)))
    return load_config(TrainConfig, path)


def train_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "grad_norm" in r]


def test_two_steps_through_the_cli_then_generate(encoded, tmp_path):
    config = make_config(encoded, stages=[{"tokens": 32, "steps": 2, "batch_size": 2}])
    config_path = tmp_path / "c.yaml"
    from vilearn.config import to_dict

    config_path.write_text(yaml.safe_dump(to_dict(config)))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(config_path), "--out", str(run),
                                      "val.every=0"])
    assert result.exit_code == 0, result.output
    groups, meta = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert meta["step"] == 2 and "dit.final_layer.linear.weight" in groups["ema"]
    image = encoded / "data" / "shapes"
    first = sorted(image.glob("*/views/000.png"))[0]
    out = tmp_path / "meshes"
    result = CliRunner().invoke(app, ["generate", str(first), "--model", str(run), "--out", str(out),
                                      "--steps", "2", "--resolution", "32", "--format", "glb,ply"])
    assert result.exit_code == 0, result.output
    assert (out / "000.glb").is_file() and (out / "000.ply").is_file()


def test_generate_names_an_unreadable_image(encoded, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = CliRunner().invoke(app, ["generate", str(bad), "--model", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "bad.png: not a readable image" in result.output


def test_resume_reproduces_the_uninterrupted_loss_curve(encoded, tmp_path):
    config = make_config(encoded)
    train(config, tmp_path / "whole")
    train(config, tmp_path / "split", max_steps=3)  # stops inside stage 0
    train(config, tmp_path / "split", resume="latest")
    whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert [s for s, _ in whole] == list(range(1, 9))
    assert split == whole


def test_stage_switch_changes_tokens_and_keeps_optimizer_and_ema(encoded, tmp_path):
    config = make_config(encoded)
    seen = []
    train(config, tmp_path / "run", max_steps=4, on_stage=lambda i, d: seen.append((i, d.tokens)))
    groups4, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000004")
    train(config, tmp_path / "run", resume="latest", max_steps=5,
          on_stage=lambda i, d: seen.append((i, d.tokens)))
    groups5, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000005")
    assert seen == [(0, 32), (1, 64)]
    # AdamW's step counters carried on (5, not 1) and EMA moved on from its stage-0 state
    steps5 = [v for k, v in groups5["optimizer"].items() if k.endswith(".step")]
    assert steps5 and all(float(v) == 5 for v in steps5)
    key = "dit.final_layer.linear.weight"
    assert not torch.equal(groups4["ema"][key], groups5["ema"][key])
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows if "grad_norm" in r] == [32, 32, 32, 32, 64]


@pytest.mark.slow
def test_sigterm_leaves_a_valid_checkpoint(encoded, tmp_path):
    from vilearn.config import to_dict

    config = make_config(encoded, stages=[{"tokens": 32, "steps": 100000, "batch_size": 2}],
                         train={"log_every": 1, "ckpt_every": 100000})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "vilearn", "train", "--config", str(path),
                                "--out", str(run), "val.every=0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = run / "log.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130, process.stderr.read().decode()
    checkpoint = latest_checkpoint(run / "checkpoints")
    groups, meta = load_checkpoint(checkpoint)
    assert meta["step"] >= 3 and set(groups) == {"model", "ema", "optimizer", "rng"}
    assert meta["step"] == max(s for s, _ in train_losses(run))


READ_BACKS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def test_a_training_step_reads_nothing_back_from_the_device(encoded, tmp_path, monkeypatch):
    """Between logged steps the host never waits for the device: no value leaves a tensor
    inside ``training_step`` (on a GPU each read-back is a synchronisation). torch's optimizers
    read their step counters, which they keep on the host on every device: those are allowed."""
    from vilearn.train import trainer

    optim = str(Path(torch.optim.__file__).parent)
    inside, reads = [False], []
    for name in READ_BACKS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if inside[0] and not caller.startswith(optim):
                reads.append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    step = trainer.training_step

    def watched(*args, **kwargs):
        inside[0] = True
        try:
            return step(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(trainer, "training_step", watched)
    config = make_config(encoded, stages=[{"tokens": 32, "steps": 3, "batch_size": 2}],
                         train={"log_every": 3, "ckpt_every": 3}, val={"every": 0})
    train(config, tmp_path / "run")
    assert [s for s, _ in train_losses(tmp_path / "run")] == [1, 3]  # logged: first and last
    assert reads == []


class SpyDiT(torch.nn.Module):
    """A denoiser that records what reaches it and predicts ``weight * x_t``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.25))
        self.aux_loss, self.calls = None, []

    def forward(self, x, t, cond, visible=None):
        self.calls.append({"x": x.detach().clone(), "t": t.clone(), "cond": cond.detach().clone(),
                           "visible": None if visible is None else visible.clone(),
                           "weight": self.weight.detach().clone()})
        return self.weight * x


def test_training_step_passes_each_items_visibility_and_nulls_the_dropped_conditions(tmp_path):
    """``training_step`` against a hand-written expectation: for each item the denoiser sees
    its own visible-token mask, x_t = (1 - t) noise + t x with x the normalised latents, its own
    t, and as condition the encoder's tokens, or the null condition where the item is dropped for
    classifier-free guidance; the loss is the squared error against the velocity x - noise."""
    from accelerate import Accelerator

    from vilearn.dit.conditioner import build_conditioner
    from vilearn.engine.ema import EMA
    from vilearn.flow.normalize import LatentStats
    from vilearn.train.denoiser import Denoiser
    from vilearn.train.trainer import training_step

    config = make_config(tmp_path, optim={"lr": 1e-2, "warmup_steps": 0})
    conditioner = build_conditioner(config.conditioner, context_in_dim=config.dit.context_in_dim)
    with torch.no_grad():
        conditioner.null_tokens.fill_(7.0)  # a null condition no encoder output equals
    spy = SpyDiT()
    model = Denoiser(spy, conditioner).train()
    g = torch.Generator().manual_seed(0)
    size, tokens, channels = conditioner.image_size, 8, 4
    batches = [{"latents": torch.randn(3, tokens, channels, generator=g),
                "visible": torch.rand(3, tokens, generator=g) < 0.5,
                "image": torch.rand(3, 3, size, size, generator=g),
                "t": torch.rand(3, generator=g), "noise": torch.randn(3, tokens, channels, generator=g),
                "drop": torch.tensor(drop), "id": ["a", "b", "c"]}
               for drop in ([True, False, True], [False, False, True])]
    stats = LatentStats(torch.full((channels,), 0.5), torch.full((channels,), 2.0))
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    output = training_step(accelerator, model, optimizer, EMA(model, 0.9), batches, stats, config, step=0)

    assert len(spy.calls) == 2
    losses = []
    for batch, seen in zip(batches, spy.calls):
        assert seen["visible"] is not None and torch.equal(seen["visible"], batch["visible"])
        assert torch.equal(seen["t"], batch["t"])
        x = (batch["latents"] - 0.5) / 2.0
        t = batch["t"][:, None, None]
        torch.testing.assert_close(seen["x"], (1 - t) * batch["noise"] + t * x)
        with torch.no_grad():
            encoded = conditioner.encoder(batch["image"])
        for j, dropped in enumerate(batch["drop"].tolist()):
            if dropped:
                assert torch.equal(seen["cond"][j], torch.full_like(seen["cond"][j], 7.0)), j
            else:
                torch.testing.assert_close(seen["cond"][j], encoded[j])
        prediction = seen["weight"] * seen["x"]
        losses.append(((prediction - (x - batch["noise"])) ** 2).mean(dim=(1, 2)))
    torch.testing.assert_close(output.per_sample, torch.cat(losses))
    assert not torch.equal(spy.calls[0]["weight"], spy.calls[1]["weight"])  # one optimizer step each


def test_errors_at_start_name_the_problem(encoded, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nmodel: {preset: tiny}\noptim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="model: unknown key 'depht'"):
        make_config(encoded, model={"preset": "tiny", "depht": 3})
    with pytest.raises(ConfigError, match="dataset: .*no manifest.jsonl"):
        train(make_config(encoded, dataset=str(tmp_path / "nowhere")), tmp_path / "r1")
    with pytest.raises(ConfigError, match="channel mismatch.*8 channels but model.in_channels is 16"):
        train(make_config(encoded, model={"preset": "tiny", "in_channels": 16}), tmp_path / "r2")
    with pytest.raises(ConfigError, match="no latents for VAE 'vae-[0-9a-f]{8}' at 128 tokens"):
        train(make_config(encoded, stages=[{"tokens": 128, "steps": 1, "batch_size": 1}]), tmp_path / "r3")


def test_data_order_is_a_function_of_the_step():
    from vilearn.train.data import StepBatches

    whole = list(StepBatches(7, 3, 2, seed=5, stage=0, start=0, stop=6))
    tail = list(StepBatches(7, 3, 2, seed=5, stage=0, start=2, stop=6))
    assert tail == whole[4:]
    indices = [i for batch in whole[:7] for i, _ in batch][:21]
    assert sorted(indices[:7]) == list(range(7)) and sorted(indices[7:14]) == list(range(7))
    ranks = [list(StepBatches(7, 3, 1, 5, 0, 0, 2, rank=r, world=2)) for r in (0, 1)]
    assert ranks[0][0] != ranks[1][0]


def test_loss_by_timestep_bucket_is_logged(encoded, tmp_path):
    train(make_config(encoded, stages=[{"tokens": 32, "steps": 2, "batch_size": 4}]), tmp_path / "r")
    row = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()][1]
    buckets = [k for k in row if k.startswith("loss_t")]
    assert buckets and all(np.isfinite(row[k]) for k in buckets)
    assert {"steps_per_s", "samples_per_s", "lr", "grad_norm"} <= set(row)


@pytest.mark.parametrize("name", ["dit-tiny", "paper-0.39b", "paper-1.1b"])
def test_packaged_train_configs_are_valid(name):
    config = load_config(TrainConfig, name)
    assert config.optim.lr > 0 and config.stages
    tokens = [stage.tokens for stage in config.stages]
    assert tokens == sorted(tokens)
    if name.startswith("paper"):
        assert config.optim.lr == 1e-4 and config.train.precision == "bf16"
        assert tokens[:3] == [256, 1024, 2048] and config.dit.in_channels == 64


def test_ema_averages_and_follows_the_model_to_its_device():
    from torch import nn

    from vilearn.engine.ema import EMA

    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=100)  # decay = min(0.5, 101 / 110) = 0.5
    assert ema.state_dict()["weight"].item() == 0.5
    ema.update(model, step=0)  # warm-up: decay = min(0.5, 1 / 10) = 0.1
    assert abs(ema.state_dict()["weight"].item() - 0.95) < 1e-7
    # accelerate moves the model after the EMA was built (CPU -> CUDA); 'meta' stands in here
    model.to("meta")
    ema.update(model, step=100)
    assert ema.shadow["weight"].device.type == "meta"
    assert ema.averaged(model)["weight"].device.type == "meta"


def test_cross_attention_dit_trains_validates_generates_and_evaluates(encoded, tmp_path):
    """Hunyuan3D-2.1's architecture (arch plain, tiny, with MoE) end to end: the MoE load-balancing
    loss is in the logged losses and in the loss it trains on; validation, generate, evaluate."""
    config = make_config(encoded, model={"arch": "plain", "preset": "tiny", "vape": "va-lpe"},
                         stages=[{"tokens": 32, "steps": 3, "batch_size": 2}],
                         val={"every": 3, "shapes": 2, "timesteps": 2, "sample_every": 3,
                              "sample_count": 1, "sample_steps": 2, "resolution": 16})
    run = tmp_path / "run"
    last = train(config, run)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "grad_norm" in r]
    assert len(steps) == 3 and all(r["aux_loss"] > 0 for r in steps)
    # the weighted aux loss is near its floor weight * top_k at balance (sum_e P_e f_e >= k)
    assert all(0.005 < r["aux_loss"] < 0.1 for r in steps)
    assert np.isfinite(last["val"]["loss"]) and np.isfinite(last["val"]["loss_fixed"])
    assert Path(last["val"]["samples"]).is_file()
    groups, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert "dit.blocks.3.moe.gate.weight" in groups["ema"] and "dit.vape.visible_embed" in groups["ema"]

    first = sorted((encoded / "data" / "shapes").glob("*/views/000.png"))[0]
    out = tmp_path / "meshes"
    result = CliRunner().invoke(app, ["generate", str(first), "--model", str(run), "--out", str(out),
                                      "--steps", "2", "--resolution", "16", "--format", "glb"])
    assert result.exit_code == 0, result.output
    assert (out / "000.glb").is_file()
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n", "1", "--seeds", "0", "--steps", "2",
                                      "--resolution", "16", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "eval" / "eval.json").read_text())["model"]["rows"]) == 1


def test_moe_aux_loss_enters_the_gradient(encoded, tmp_path):
    """Same data, seeds and first loss; only the aux weight differs: the second step's flow loss
    moves iff the trainer backpropagates the aux loss."""
    losses = {}
    for weight in (0.0, 0.0, 100.0):
        config = make_config(encoded, model={"arch": "plain", "preset": "tiny", "moe_aux_weight": weight},
                             stages=[{"tokens": 32, "steps": 2, "batch_size": 2}], val={"every": 0})
        run = tmp_path / f"run-{len(losses)}"
        train(config, run)
        losses[len(losses)] = train_losses(run)
    assert losses[0] == losses[1]  # deterministic
    assert losses[2][0] == losses[0][0]  # step 1: before any update
    assert abs(losses[2][1][1] - losses[0][1][1]) > 1e-6


def test_a_resumed_run_sees_the_same_items_in_the_same_order(encoded, tmp_path, monkeypatch):
    """Item by item (shape, view, posterior sample, VST) against the uninterrupted run, for a
    stop inside a stage and one at the stage boundary."""
    import vilearn.train.trainer as trainer

    real, seen = trainer.training_step, {}

    def spy(accelerator, model, optimizer, ema, batches, stats, config, step):
        seen.setdefault(current, []).append((step, [
            (shape_id, int(view), float(batch["latents"][j].sum()),
             batch["visible"][j].nonzero().flatten().tolist())
            for batch in batches for j, (shape_id, view) in enumerate(zip(batch["id"], batch["view"]))]))
        return real(accelerator, model, optimizer, ema, batches, stats, config, step)

    monkeypatch.setattr(trainer, "training_step", spy)
    config = make_config(encoded)  # stages: 4 steps at 32 tokens, then 4 at 64
    current = "whole"
    train(config, tmp_path / "whole")
    for stop in (3, 4):
        current = f"stopped at {stop}"
        train(config, tmp_path / current, max_steps=stop)
        train(config, tmp_path / current, resume="latest")
        assert seen[current] == seen["whole"], current
    assert [step for step, _ in seen["whole"]] == list(range(8))
    rows = map(json.loads, (encoded / "data" / "manifest.jsonl").read_text().splitlines())
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    first_epoch = [item[0] for _, items in seen["whole"][:4] for item in items][:len(train_ids)]
    assert sorted(first_epoch) == sorted(train_ids)  # a permutation per epoch: each shape once


def _randomized(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_validation_scores_the_ema_weights_and_restores_the_raw_ones(encoded, encoded_key, tmp_path):
    import copy

    from vilearn.engine.ema import EMA
    from vilearn.engine.logging import JSONLLogger
    from vilearn.flow.normalize import LatentStats
    from vilearn.train.trainer import build_model
    from vilearn.train.validation import Validator

    config = make_config(encoded, stages=[{"tokens": 32, "steps": 4, "batch_size": 2}])
    model = _randomized(build_model(config), 0)  # non-zero final layer: the weights show
    ema = EMA(model, 0.9, keys=model.trainable_state().keys())
    g = torch.Generator().manual_seed(1)
    ema.shadow = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ema.shadow.items()}
    stats = {32: LatentStats.load(encoded / "data" / "latents" / encoded_key / "32" / "stats.json")}
    validator = Validator(config, encoded_key, stats, tmp_path)
    raw = {k: v.clone() for k, v in model.state_dict().items()}

    class Writer:
        def add_scalar(self, *args):
            pass

    record = validator.run(4, model.train(), ema, JSONLLogger(tmp_path / "log.jsonl"), Writer())
    items = validator.held_out(32, model.conditioner.image_size)
    averaged = copy.deepcopy(model)
    averaged.load_state_dict({k: ema.shadow.get(k, v) for k, v in raw.items()})
    with_ema = validator.flow_loss(averaged.eval(), items, stats[32], fixed_partition=False)
    with_raw = validator.flow_loss(copy.deepcopy(model).eval(), items, stats[32], fixed_partition=False)
    assert record["loss"] == pytest.approx(with_ema, rel=1e-6) and abs(with_raw - with_ema) > 1e-3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in raw.items()) and model.training


def test_generate_and_evaluate_sample_with_the_ema_weights(encoded, tmp_path, monkeypatch):
    import vilearn.flow.pipeline as pipeline
    from vilearn.engine.checkpoint import save_checkpoint

    run = tmp_path / "run"
    train(make_config(encoded, stages=[{"tokens": 32, "steps": 2, "batch_size": 2}], val={"every": 0}), run)
    path = latest_checkpoint(run / "checkpoints")
    groups, meta = load_checkpoint(path)
    g = torch.Generator().manual_seed(0)  # EMA and raw weights made clearly different
    groups["ema"] = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in groups["ema"].items()}
    save_checkpoint(run / "checkpoints", meta["step"], groups,
                    meta={k: v for k, v in meta.items() if k not in ("step", "files")})
    seen, real = [], pipeline.generate_latents

    def spy(model, conditioner, images, **kwargs):
        seen.append({**{f"dit.{k}": v.clone() for k, v in model.state_dict().items()},
                     **{f"conditioner.{k}": v.clone() for k, v in conditioner.state_dict().items()}})
        return real(model, conditioner, images, **kwargs)

    monkeypatch.setattr(pipeline, "generate_latents", spy)
    image = sorted((encoded / "data" / "shapes").glob("*/views/000.png"))[0]
    runner = CliRunner()
    for args in (["generate", str(image), "--model", str(run), "--out", str(tmp_path / "m"),
                  "--steps", "1", "--resolution", "16"],
                 ["evaluate", str(run), "--n", "1", "--steps", "1", "--resolution", "16",
                  "--no-references", "--out", str(tmp_path / "eval")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert len(seen) == 2
    for weights in seen:
        assert all(torch.equal(weights[k], v) for k, v in groups["ema"].items())
        assert any(not torch.equal(weights[k], v) for k, v in groups["model"].items())
