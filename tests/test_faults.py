"""The faults ViLearn survives, one test each, grouped as in issue 16. Every test injects the
fault (a truncated or missing file, a killed writer, a bad value, a name clash, a swapped VAE)
and checks what the user gets now: the job goes on, the bad input is named, nothing is
overwritten or mixed up.

1. name clashes          2. which VAE made the latents      3. numeric settings
4. unreadable shape files 5. damaged checkpoints            6. runs moved or run from elsewhere
7. prepare's source       8. smaller faults                 9. newcomer papercuts

10. tests that would notice a broken feature (each against an independent truth), kept next to
    the feature they check:

    - tests/vae/test_vae_train.py::test_kl_is_the_closed_form_gaussian_kl: the VAE's KL term
      against the closed form and torch.distributions
    - tests/test_dit.py::test_va_lpe_reaches_the_output_through_a_non_zero_final_layer: VA-LPE's
      embeddings move the prediction once the zero-initialised final layer is not zero
    - tests/test_train.py::test_validation_scores_the_ema_weights_and_restores_the_raw_ones and
      tests/test_train.py::test_generate_and_evaluate_sample_with_the_ema_weights: validation,
      generate and evaluate use the EMA weights
    - tests/test_train.py::test_training_step_passes_each_items_visibility_and_nulls_the_dropped_conditions:
      a spy denoiser sees each item's visible-token mask, and the null condition for the items
      dropped for classifier-free guidance
    - tests/test_render.py::test_intrinsics_follow_the_documented_convention: principal point and
      focal length as documented
    - tests/test_metrics.py::test_fscore_threshold_is_strict_at_the_boundary: F-score counts
      d < t, on exact binary distances
    - tests/test_train.py::test_a_resumed_run_sees_the_same_items_in_the_same_order: a resumed
      run's items (shape, view, posterior sample, VST), one by one, against the uninterrupted run's
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from train_configs import with_changes
from vilearn.cli import app
from vilearn.config import ConfigError, from_dict, load_config, to_dict
from vilearn.engine.checkpoint import CheckpointError, CheckpointWarning, load_checkpoint, load_latest
from vilearn.engine.stop import TrainingFailed
from vilearn.train.config import TrainConfig
from vilearn.train.trainer import train

CONDITIONER = {"kind": "patch", "image_size": 32, "patch_size": 16, "width": 64, "depth": 1,
               "num_heads": 4}


def run_config(root: Path, steps: int = 4, **changes) -> TrainConfig:
    """A tiny training config on the ``encoded`` fixture's layout under ``root``."""
    data = {"dataset": str(root / "data"), "vae": str(root / "vae"),
            "model": {"preset": "tiny", "vape": "va-rope"}, "conditioner": CONDITIONER,
            "stages": [{"tokens": 32, "steps": steps, "batch_size": 2}],
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "train": {"log_every": 1, "ckpt_every": 2, "keep_checkpoints": 3},
            "val": {"every": 0}}
    return from_dict(TrainConfig, with_changes(data, changes))


def train_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "grad_norm" in r]


def said(result) -> str:
    """A CLI result's output with its line wrapping undone."""
    return " ".join(result.output.split())


def copy_of(encoded: Path, tmp_path: Path) -> Path:
    """A writable copy of the shared encoded fixture (data, vae)."""
    root = tmp_path / "copy"
    shutil.copytree(encoded, root)
    return root


def truncate(path: Path, size: int = 3000) -> Path:
    """``truncate -s size path``."""
    with open(path, "r+b") as handle:
        handle.truncate(min(size, path.stat().st_size // 2))
    return path


@pytest.fixture(scope="module")
def trained(encoded, tmp_path_factory):
    """A 2-step run on the shared encoded fixture."""
    run = tmp_path_factory.mktemp("faults-run") / "run"
    train(run_config(encoded, steps=2), run)
    return run


# --- 1. name clashes ------------------------------------------------------------------------------


def test_generate_two_images_with_the_same_stem_writes_two_meshes(encoded, trained, tmp_path):
    view = next((encoded / "data" / "shapes").glob("*/views/000.png"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(view, tmp_path / folder / "good.png")
    out = tmp_path / "out"
    args = ["generate", str(tmp_path / "a" / "good.png"), str(tmp_path / "b" / "good.png"),
            "--model", str(trained), "--out", str(out), "--steps", "1", "--resolution", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a__good.glb", "b__good.glb"]
    assert "2 mesh(es)" in said(result)
    # a second run does not overwrite what the first wrote, unless told to
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "a__good.glb exists" in said(again) and "--overwrite" in said(again)
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_output_names_are_distinct_for_any_inputs():
    from vilearn.cli.train import output_names

    paths = [Path("x/a/000.png"), Path("x/b/000.png"), Path("y/c/001.png"), Path("x/a/000.png")]
    assert output_names(paths) == ["a__000", "b__000", "001", "a__000-2"]


# --- 2. latents belong to the VAE that made them --------------------------------------------------


def _tiny_vae(seed: int):
    from vilearn.vae import VecSetVAE, preset

    torch.manual_seed(seed)
    return VecSetVAE(preset("tiny")).eval()


def test_two_weight_files_in_one_folder_get_separate_latents(encoded, tmp_path):
    from vilearn.io import save_safetensors
    from vilearn.vae.identity import load_identified

    root = copy_of(encoded, tmp_path)
    folder = tmp_path / "weights"
    for name, seed in (("first", 1), ("second", 2)):
        vae = _tiny_vae(seed)
        from vilearn.vae.loading import CONFIG_META_KEY

        save_safetensors(folder / f"{name}.safetensors", vae.state_dict(),
                         metadata={CONFIG_META_KEY: json.dumps(to_dict(vae.config))})
    runner = CliRunner()
    for name in ("first", "second"):
        result = runner.invoke(app, ["encode", str(root / "data"), "--vae",
                                     str(folder / f"{name}.safetensors"),
                                     "--tokens", "32", "--surface-points", "1024"])
        assert result.exit_code == 0, result.output
    keys = {load_identified(folder / f"{n}.safetensors")[1].key for n in ("first", "second")}
    latents = root / "data" / "latents"
    assert len(keys) == 2 and all((latents / k / "32" / "stats.json").is_file() for k in keys)
    assert {k.rsplit("-", 1)[0] for k in keys} == {"first", "second"}


def test_vae_retrained_in_place_gets_new_latents_and_the_old_ones_stay_apart(encoded, tmp_path):
    from vilearn.vae.encode import read_latents
    from vilearn.vae.identity import load_identified
    from vilearn.vae.loading import save_vae

    root = copy_of(encoded, tmp_path)
    old_key = load_identified(root / "vae")[1].key
    old = {p.name: read_latents(p)["mean"]
           for p in (root / "data" / "latents" / old_key / "32").glob("*.safetensors")}
    save_vae(root / "vae", _tiny_vae(7))  # retrained in place: same path, new weights
    new_key = load_identified(root / "vae")[1].key
    assert new_key != old_key and new_key.startswith("vae-")
    runner = CliRunner()
    # group and train with the new weights do not pick up the old VAE's latents
    result = runner.invoke(app, ["group", str(root / "data"), "--vae", str(root / "vae")])
    assert result.exit_code == 2 and "no latents of VAE" in said(result) and "vilearn encode" in said(result)
    with pytest.raises(ConfigError, match="no latents of VAE"):
        train(run_config(root), tmp_path / "run")
    result = runner.invoke(app, ["encode", str(root / "data"), "--vae", str(root / "vae"), "--tokens", "32",
                                 "--surface-points", "1024"])
    assert result.exit_code == 0, result.output
    for name, mean in old.items():  # the first VAE's latents are untouched, in their own folder
        assert torch.equal(read_latents(root / "data" / "latents" / old_key / "32" / name)["mean"], mean)
        assert not torch.equal(read_latents(root / "data" / "latents" / new_key / "32" / name)["mean"], mean)


def test_latents_recorded_for_another_vae_are_refused(encoded, tmp_path):
    from vilearn.vae.identity import load_identified

    root = copy_of(encoded, tmp_path)
    key = load_identified(root / "vae")[1].key
    owner = root / "data" / "latents" / key / "vae.json"
    record = json.loads(owner.read_text())
    owner.write_text(json.dumps({**record, "hash": "0" * 64, "path": "/elsewhere/vae"}))
    for args in (["group", str(root / "data"), "--vae", str(root / "vae")],
                 ["encode", str(root / "data"), "--vae", str(root / "vae"), "--tokens", "32",
                  "--surface-points", "1024"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "made by VAE '/elsewhere/vae'" in said(result), result.output
    with pytest.raises(ConfigError, match="made by VAE '/elsewhere/vae'"):
        train(run_config(root), tmp_path / "run")


def test_latents_written_before_identities_ask_to_re_encode(encoded, tmp_path):
    root = copy_of(encoded, tmp_path)
    (latents,) = (root / "data" / "latents").iterdir()
    legacy = latents.with_name("assets")  # the old layout: latents/<folder name>/ without a hash
    latents.rename(legacy)
    (legacy / "vae.json").write_text(json.dumps({"vae_config": {}, "surface_points": 1024}))
    with pytest.raises(ConfigError, match=r"latents/assets: written by an older vilearn.*re-encode"):
        train(run_config(root), tmp_path / "run")
    result = CliRunner().invoke(app, ["group", str(root / "data"), "--vae", str(root / "vae")])
    assert result.exit_code == 2 and "re-encode" in said(result)


def test_the_packaged_vae_has_a_proper_name():
    from vilearn.bench.data import PACKAGED_VAE
    from vilearn.vae.identity import load_identified, readable_name

    assert readable_name(PACKAGED_VAE) == "vae-tiny-urdfs"
    assert load_identified(PACKAGED_VAE)[1].key.startswith("vae-tiny-urdfs-")


def test_generate_refuses_a_vae_that_changed_since_training(encoded, tmp_path):
    from vilearn.vae.loading import save_vae

    root = copy_of(encoded, tmp_path)
    train(run_config(root, steps=2), tmp_path / "run")
    save_vae(root / "vae", _tiny_vae(9))
    image = next((root / "data" / "shapes").glob("*/views/000.png"))
    result = CliRunner().invoke(app, ["generate", str(image), "--model", str(tmp_path / "run"),
                                      "--out", str(tmp_path / "out"), "--steps", "1", "--resolution", "16"])
    assert result.exit_code == 2 and "is not the one this run was trained with" in said(result)


def test_resuming_with_a_vae_retrained_in_place_is_refused_naming_the_vae(encoded, tmp_path):
    from vilearn.grouping.run import group_dataset
    from vilearn.vae.encode import encode_dataset
    from vilearn.vae.identity import identify_vae
    from vilearn.vae.loading import save_vae

    root = copy_of(encoded, tmp_path)
    config, run = run_config(root, steps=4), tmp_path / "run"
    train(config, run, max_steps=2)
    recorded = (run / "vae.json").read_text()
    vae = _tiny_vae(11)
    save_vae(root / "vae", vae)  # same path, new weights, with latents and groups of its own
    identity = identify_vae(vae, root / "vae")
    encode_dataset(root / "data", vae, identity, [32], surface_points=1024)
    group_dataset(root / "data", vae, identity, [32])
    old = json.loads(recorded)["hash"][:12]
    named = (f"vae: {root / 'vae'} is not the VAE this run was trained with ({run / 'vae.json'}: "
             f"hash {old}, now {identity.digest[:12]})")
    with pytest.raises(ConfigError, match=re.escape(named)):
        train(config, run, resume="latest")
    assert (run / "vae.json").read_text() == recorded  # the run still names the VAE it was trained with
    assert max(step for step, _ in train_losses(run)) == 2


# --- 3. every numeric setting has a range, and the error names the key ----------------------------


@pytest.mark.parametrize("override, key", [
    ("optim.min_lr_ratio=-1", "optim.min_lr_ratio"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("optim.weight_decay=-0.01", "optim.weight_decay"),
    ("optim.warmup_steps=-5", "optim.warmup_steps"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas\[1\]"),
    ("val.shapes=-1", "val.shapes"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("train.workers=-2", "train.workers"),
    ("conditioner.patch_size=0", "conditioner.patch_size"),
    ("stages=[{tokens: 0, steps: 1, batch_size: 1}]", r"stages\[0\].tokens"),
])
def test_train_settings_out_of_range_are_named(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: .* (out of range|finite)"):
        load_config(TrainConfig, "dit-tiny", [override])


@pytest.mark.parametrize("override", ["optim.min_lr_ratio=-1", "train.ema_decay=1.5", "train.kl_weight=-1",
                                      "data.near_fraction=2", "val.fscore_threshold=0", "model.width=0"])
def test_train_vae_settings_out_of_range_are_named(override):
    from vilearn.vae.train_config import TrainVAEConfig

    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: .* out of range"):
        load_config(TrainVAEConfig, "vae-tiny", [override])


@pytest.mark.parametrize("option", ["--tokens", "--resolution", "--steps"])
def test_generate_options_out_of_range_are_refused_by_name(option, tmp_path):
    result = CliRunner().invoke(app, ["generate", "x.png", "--model", str(tmp_path), "--out", str(tmp_path),
                                      option, "0"])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in said(result)


# --- 4. an unreadable shape file is recorded and the job goes on ----------------------------------


def train_ids(data: Path) -> list[str]:
    return [r["id"] for r in map(json.loads, (data / "manifest.jsonl").read_text().splitlines())
            if r["split"] == "train"]


def test_truncated_view_file_is_named_by_group_and_inspect_and_skipped_by_train(encoded, tmp_path):
    root = copy_of(encoded, tmp_path)
    data = root / "data"
    shape_id = train_ids(data)[0]
    bad = [truncate(data / "shapes" / shape_id / "views" / f"00{k}.npz") for k in (0, 1)]  # truncate -s 3000
    shutil.rmtree(next((data / "latents").iterdir()) / "32" / "groups")
    runner = CliRunner()
    result = runner.invoke(app, ["group", str(data), "--vae", str(root / "vae"), "--tokens", "32"])
    assert result.exit_code == 1, result.output
    line = said(result)
    assert f"failed: {shape_id}@32: {bad[0]}: unreadable (BadZipFile" in line
    assert "grouped, 0 already done, 1 failed" in line
    result = runner.invoke(app, ["inspect", str(data), "--verify"])
    line = said(result)
    assert result.exit_code == 1 and f"{shape_id} / views/000.npz: {bad[0]}: unreadable (BadZipFile" in line
    # the 64-token groups predate the damage: training reads the shape's bad view and goes on
    with pytest.warns(UserWarning, match=re.escape(f"training item replaced: {data / 'shapes' / shape_id}")):
        last = train(run_config(root, **{"stages": [{"tokens": 64, "steps": 3, "batch_size": 3}]}),
                     tmp_path / "run")
    assert all(problem.startswith(tuple(f"{b}: unreadable" for b in bad)) for problem in last["unreadable"])


def test_truncated_surface_fails_its_shape_in_encode_and_the_others_are_encoded(encoded, tmp_path):
    root = copy_of(encoded, tmp_path)
    data = root / "data"
    shutil.rmtree(data / "latents")
    ids = sorted(p.name for p in (data / "shapes").iterdir())
    bad = truncate(data / "shapes" / ids[0] / "surface.npz")
    result = CliRunner().invoke(app, ["encode", str(data), "--vae", str(root / "vae"), "--tokens", "32",
                                      "--surface-points", "1024"])
    assert result.exit_code == 1, result.output
    assert f"failed: {ids[0]}: {bad}: unreadable" in said(result)
    (latents,) = (data / "latents").iterdir()
    assert sorted(p.stem for p in (latents / "32").glob("*.safetensors")) == ids[1:]
    stats = json.loads((latents / "32" / "stats.json").read_text())
    assert stats["shapes"] == len(ids) - 1


def test_an_unreadable_latents_file_is_encoded_again(encoded, tmp_path):
    root = copy_of(encoded, tmp_path)
    data = root / "data"
    (latents,) = (data / "latents").iterdir()
    path = next((latents / "32").glob("*.safetensors"))
    good = path.read_bytes()
    truncate(path, 100)
    result = CliRunner().invoke(app, ["encode", str(data), "--vae", str(root / "vae"), "--tokens", "32",
                                      "--surface-points", "1024"])
    assert result.exit_code == 0 and f"re-encoded unreadable {path}" in said(result)
    assert path.read_bytes() == good  # deterministic: the same bytes as the first time


def test_train_replaces_an_unreadable_item_counts_it_and_keeps_the_order(encoded, tmp_path):
    root = copy_of(encoded, tmp_path)
    (latents,) = (root / "data" / "latents").iterdir()
    bad = truncate(latents / "32" / f"{train_ids(root / 'data')[0]}.safetensors", 200)
    config = run_config(root, steps=4)
    with pytest.warns(UserWarning, match=re.escape(f"training item replaced: {bad}: unreadable")):
        last = train(config, tmp_path / "run")
    (problem,) = last["unreadable"]
    assert problem == f"{bad}: unreadable (SafetensorError: {_safetensors_error(bad)})"
    counts = [r.get("unreadable_items", 0) for r in map(json.loads, (tmp_path / "run" / "log.jsonl")
                                                        .read_text().splitlines()) if "grad_norm" in r]
    assert counts[-1] == sum(last["unreadable"].values()) > 0 and counts == sorted(counts)
    # the replacement is deterministic: a second run sees the same items and the same losses
    with pytest.warns(UserWarning):
        train(config, tmp_path / "again")
    assert train_losses(tmp_path / "again") == train_losses(tmp_path / "run")


def _safetensors_error(path: Path) -> str:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        load_file(str(path))
    except SafetensorError as error:
        return str(error)
    raise AssertionError(f"{path} reads fine")


def test_an_unexpected_exception_in_training_saves_the_last_step(encoded, tmp_path, monkeypatch):
    import vilearn.train.trainer as trainer

    config = run_config(encoded, steps=6, train={"log_every": 1, "ckpt_every": 100, "keep_checkpoints": 3})
    train(config, tmp_path / "whole")
    real = trainer.training_step

    def failing(accelerator, model, optimizer, ema, batches, stats, config, step):
        if step == 3:
            raise RuntimeError("disk on fire")
        return real(accelerator, model, optimizer, ema, batches, stats, config, step)

    monkeypatch.setattr(trainer, "training_step", failing)
    with pytest.raises(TrainingFailed, match="stopped at step 3: RuntimeError: disk on fire"):
        train(config, tmp_path / "split")
    groups, meta = load_checkpoint(tmp_path / "split" / "checkpoints" / "step-0000003")
    assert meta["step"] == 3 and "disk on fire" in (tmp_path / "split" / "error.txt").read_text()
    monkeypatch.setattr(trainer, "training_step", real)
    train(config, tmp_path / "split", resume="latest")
    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "whole")


def test_the_cli_reports_a_failed_training_with_exit_status_1(encoded, tmp_path, monkeypatch):
    import vilearn.train.trainer as trainer

    def failing(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trainer, "training_step", failing)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(run_config(encoded))))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "disk on fire" in said(result) and "error.txt" in said(result)


def test_train_vae_replaces_an_unreadable_shape_and_saves_on_an_exception(tmp_path, monkeypatch):
    import vilearn.vae.train as vae_train
    from vilearn.vae.synthetic import make_dataset
    from vilearn.vae.train_config import TrainVAEConfig

    dataset = make_dataset(tmp_path / "data", num_shapes=4, num_val=0, seed=3, num_surface=512,
                           num_uniform=128, num_near=128)
    config = load_config(TrainVAEConfig, "vae-tiny", [
        "model.width=32", "model.heads=4", "model.num_decoder_layers=1", "data.tokens=[16]",
        "data.num_surface=256", "data.num_queries=128", "train.steps=4", "train.batch_size=2",
        "train.ckpt_every=100", "train.log_every=1"])
    ids = sorted(p.name for p in (dataset / "shapes").iterdir())
    bad = truncate(dataset / "shapes" / ids[0] / "occupancy.npz", 100)
    real = vae_train.training_step

    def failing(accelerator, model, optimizer, ema, batch, config, step):
        if step == 2:
            raise RuntimeError("out of memory")
        return real(accelerator, model, optimizer, ema, batch, config, step)

    monkeypatch.setattr(vae_train, "training_step", failing)
    with pytest.warns(UserWarning, match=f"training shape replaced: {bad}: unreadable"), \
            pytest.raises(TrainingFailed, match="step 2: RuntimeError: out of memory"):
        vae_train.train_vae(dataset, config, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000002")[1]["step"] == 2


def test_evaluate_skips_views_with_unreadable_files_names_them_and_exits_1(encoded, encoded_key, tmp_path):
    root = copy_of(encoded, tmp_path)
    data = root / "data"
    train(run_config(root, steps=2), tmp_path / "run")
    first, second, third, fourth = train_ids(data)[:4]  # evaluated on the train split: view 0 of each
    view = truncate(data / "shapes" / first / "views" / "000.npz")  # truncate -s 3000
    latents = truncate(data / "latents" / encoded_key / "32" / f"{second}.safetensors")
    mesh = truncate(data / "shapes" / third / "mesh.npz")  # read only for the cases grid
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--split", "train", "--n", "4",
                                      "--steps", "1", "--resolution", "16", "--out", str(out)])
    assert result.exit_code == 1, result.output
    line = said(result)
    assert "model: 1 held-out view(s) skipped" in line and "ceiling: 2 held-out view(s) skipped" in line
    assert f"failed: {first} view 0: {view}: unreadable (BadZipFile" in line
    assert f"failed: {second} view 0: {latents}: unreadable" in line
    report = json.loads((out / "eval.json").read_text())
    # the model needs no latents: only the bad view is skipped; the ceiling decodes each shape's own
    assert {r["id"] for r in report["model"]["rows"]} == {second, third, fourth}
    assert list(report["model"]["skipped"]) == [f"{first} view 0"]
    assert {r["id"] for r in report["ceiling"]["rows"]} == {third, fourth}
    assert sorted(report["ceiling"]["skipped"]) == [f"{first} view 0", f"{second} view 0"]
    fscore = report["model"]["summary"]["fscore@0.05"]
    assert fscore["n"] + fscore["missing"] == 3
    chance = report["chance"]  # random latents against every view: the bad view is skipped here too
    assert f"{first} view 0" in chance["skipped"] and len(chance["rows"]) + len(chance["skipped"]) == 4
    text = (out / "eval.md").read_text()
    assert "## Skipped views" in text and f"- {first} view 0: {view}: unreadable" in text
    assert f"{third}'s ground truth left blank: {mesh}: unreadable" in line and (out / "cases.png").is_file()


# --- 5. a damaged checkpoint is found before it is used -------------------------------------------


@pytest.fixture
def checkpointed(encoded, tmp_path):
    """A 4-step run with checkpoints at steps 2 and 4."""
    config = run_config(encoded, steps=4)
    train(config, tmp_path / "run", max_steps=4)
    return config, tmp_path / "run"


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove-rng", "empty-meta"])
def test_resume_latest_falls_back_to_the_newest_intact_checkpoint(checkpointed, damage):
    config, run = checkpointed
    newest = run / "checkpoints" / "step-0000004"
    bad = {"truncate": newest / "model.safetensors", "flip": newest / "ema.safetensors",
           "remove-rng": newest / "rng.safetensors", "empty-meta": newest / "meta.json"}[damage]
    if damage == "truncate":
        truncate(bad, 1000)
    elif damage == "flip":  # same size, one byte changed: only the recorded SHA-256 sees it
        data = bytearray(bad.read_bytes())
        data[-1] ^= 0xFF
        bad.write_bytes(bytes(data))
    elif damage == "remove-rng":
        bad.unlink()
    else:
        bad.write_text("")
    older = run / "checkpoints" / "step-0000002"
    with pytest.warns(CheckpointWarning, match=f"{re.escape(str(bad))}: .*using {re.escape(str(older))}"):
        path, _, meta = load_latest(run / "checkpoints", ("model", "ema", "optimizer", "rng"))
    assert meta["step"] == 2
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(newest, ("model", "ema", "optimizer", "rng"))
    with pytest.warns(CheckpointWarning):
        train(config, run, resume="latest", max_steps=3)  # resumes from step 2, not from the damaged 4
    assert max(step for step, _ in train_losses(run)) == 3


def test_generate_and_evaluate_name_a_broken_checkpoint(checkpointed, encoded, tmp_path):
    _, run = checkpointed
    for step in ("step-0000002", "step-0000004"):
        truncate(run / "checkpoints" / step / "ema.safetensors", 500)
    image = next((encoded / "data" / "shapes").glob("*/views/000.png"))
    for args in (["generate", str(image), "--model", str(run), "--out", str(tmp_path / "o")],
                 ["evaluate", str(run), "--n", "1"],
                 ["generate", str(image), "--model", str(run / "checkpoints" / "step-0000004"),
                  "--out", str(tmp_path / "o")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "step-0000004/ema.safetensors: truncated or damaged" in said(result)


def test_a_missing_rng_file_or_an_empty_meta_is_named_on_explicit_resume(checkpointed):
    config, run = checkpointed
    step = run / "checkpoints" / "step-0000002"
    (step / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"step-0000002/rng.safetensors: missing"):
        train(config, run, resume=str(step))
    (step / "meta.json").write_text("")
    with pytest.raises(CheckpointError, match=r"step-0000002/meta.json: unreadable"):
        train(config, run, resume=str(step))


# --- 6. a run refers to its files by absolute paths -----------------------------------------------


def test_a_run_made_with_relative_paths_works_from_any_folder(encoded, tmp_path, monkeypatch):
    from vilearn.train.loading import load_trained, run_vae

    monkeypatch.chdir(encoded)
    config = run_config(Path("."), steps=2)
    assert config.dataset == "data"
    train(config, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["dataset"] == str(encoded / "data") and stored["vae"] == str(encoded / "vae")
    trained = load_trained(tmp_path / "run")
    assert Path(trained.config.dataset) == encoded / "data"
    assert run_vae(trained)[1].key == json.loads((tmp_path / "run" / "vae.json").read_text())["key"]


def test_an_older_run_with_relative_paths_finds_them_from_its_own_folder(encoded, tmp_path, monkeypatch):
    from vilearn.train.loading import load_trained

    root = copy_of(encoded, tmp_path)  # tmp_path/copy/{data,vae}, the run in tmp_path/runs/dit
    run = tmp_path / "runs" / "dit"
    train(run_config(root, steps=2), run)
    meta_path = run / "checkpoints" / "step-0000002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"].update(dataset="copy/data", vae="copy/vae")  # as given from tmp_path, stored so
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    trained = load_trained(run)
    assert (trained.config.dataset, trained.config.vae) == (str(root / "data"), str(root / "vae"))


def test_a_local_dinov2_folder_given_relative_is_stored_absolute_and_found_from_elsewhere(
        encoded, tmp_path, monkeypatch):
    import transformers

    from vilearn.train.loading import load_trained
    from vilearn.train.trainer import absolute_paths

    folder = tmp_path / "models" / "tiny-dinov2"  # a DINOv2 on disk, not on the hub
    transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=56,
        patch_size=14)).save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": 56},
                                   crop_size={"height": 56, "width": 56}).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    config = run_config(encoded, steps=2, **{"model.context_in_dim": 32, "conditioner": {
        "kind": "dinov2", "model": "models/tiny-dinov2", "image_size": 56}})
    train(config, tmp_path / "run")
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["conditioner"]["model"] == str(folder)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # models/tiny-dinov2 means nothing from here
    trained = load_trained(tmp_path / "run")
    assert trained.config.conditioner.model == str(folder)
    assert type(trained.model.conditioner.encoder.model).__name__ == "Dinov2Model"
    # a hub id is not a path: kept as given
    hub = with_changes(to_dict(config), {"conditioner.model": "facebook/dinov2-giant"})
    assert absolute_paths(from_dict(TrainConfig, hub)).conditioner.model == "facebook/dinov2-giant"


# --- 7. prepare validates its source before writing anything --------------------------------------


def test_prepare_from_a_missing_folder_writes_nothing_and_a_retry_may_change_settings(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "no-such-dir"), str(out)])
    assert result.exit_code == 2 and "not a folder" in said(result)
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "empty"), str(out)])
    assert result.exit_code == 2 and "no mesh files" in said(result) and not out.exists()
    result = CliRunner().invoke(app, ["prepare", "pybullet:random_urdfs", str(out), "--config",
                                      "prepare-tiny", "--limit", "1", "seed=3"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "dataset.json").read_text())["prepare"]["seed"] == 3


def test_a_dataset_folder_without_prepared_shapes_takes_new_settings(tmp_path):
    from vilearn.data.prepare import PrepareConfig, prepare_dataset

    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.json").write_text(json.dumps({"format_version": 2, "prepare": {"seed": 99}}))
    config = load_config(PrepareConfig, "prepare-tiny")
    assert prepare_dataset("pybullet:random_urdfs", out, config, limit=1).ok == 1
    other = load_config(PrepareConfig, "prepare-tiny", ["seed=5"])
    with pytest.raises(ConfigError, match="already prepared with different settings"):
        prepare_dataset("pybullet:random_urdfs", out, other, limit=1)


# --- 8. smaller faults ----------------------------------------------------------------------------


def test_train_without_grouping_says_why_there_is_nothing_to_train_on(encoded, tmp_path):
    root = copy_of(encoded, tmp_path)
    shutil.rmtree(next((root / "data" / "latents").iterdir()) / "32" / "groups")
    with pytest.raises(ConfigError, match=r"no training items at 32 tokens.*\d+ no grouping.*vilearn group"):
        train(run_config(root), tmp_path / "run")


def test_train_with_a_missing_vae_names_the_path(encoded, tmp_path):
    with pytest.raises(ConfigError, match=f"vae: VAE '{tmp_path / 'nowhere'}': no such file or folder"):
        train(run_config(encoded, vae=str(tmp_path / "nowhere")), tmp_path / "run")


def test_the_demo_progress_bars_count_failures(monkeypatch, tmp_path):
    import vilearn.data.prepare as prepare
    from vilearn.cli.demo import bar_reporter
    from vilearn.cli.progress import progress_bar
    from vilearn.demo import DemoSettings, run_demo

    class Stop(Exception):
        pass

    def fake_prepare(source, out, config, workers, limit, progress):
        summary = prepare.PrepareSummary(total=2, ok=1, failed=1)
        progress(None, summary)
        raise Stop

    monkeypatch.setattr(prepare, "prepare_dataset", fake_prepare)
    with progress_bar() as bars, pytest.raises(Stop):
        run_demo(tmp_path, DemoSettings(shapes=2), bar_reporter(bars))
    assert bars.tasks[0].completed == 2 and bars.tasks[0].fields["failed"] == 1


@pytest.mark.parametrize("text, words", [
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 0 1 2\nf 1 2 3\n", "OBJ face index 0 on line 5"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1/0 2 4\n", "OBJ face index 0 on line 6"),
    ("hello, this is a text file\nand not a mesh\n", "not a mesh: nothing could be read"),
])
def test_bad_obj_files_are_named_for_what_they_are(tmp_path, text, words):
    from vilearn.data.mesh import MeshError, load_mesh

    (tmp_path / "bad.obj").write_text(text)
    with pytest.raises(MeshError, match=words):
        load_mesh(tmp_path / "bad.obj")


def test_prepare_failure_summary_names_the_files(tmp_path):
    (tmp_path / "meshes").mkdir()
    (tmp_path / "meshes" / "zero.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 0 1 2\n")
    import trimesh

    trimesh.creation.box().export(tmp_path / "meshes" / "good.obj")
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "meshes"), str(tmp_path / "out"),
                                      "--config", "prepare-tiny"])
    assert result.exit_code == 0, result.output
    line = said(result)
    assert f"failed: zero ({tmp_path / 'meshes' / 'zero.obj'}): OBJ face index 0" in line


def test_orphan_tmp_files_of_a_killed_writer_are_cleaned_on_the_next_run(tmp_path):
    from vilearn.data.prepare import PrepareConfig, prepare_dataset
    from vilearn.io import clean_stale_tmp, tmp_prefix

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = out / (tmp_prefix("manifest.jsonl").replace(str(os.getpid()), str(dead.pid)) + "x1.tmp")
    orphan.write_text("half")
    mine = out / (tmp_prefix("manifest.jsonl") + "x2.tmp")  # a live writer's file (this process)
    mine.write_text("being written")
    prepare_dataset("pybullet:random_urdfs", out, load_config(PrepareConfig, "prepare-tiny"), limit=1)
    assert not orphan.exists() and mine.exists()
    assert clean_stale_tmp(out) == 0


def test_a_process_killed_while_writing_leaves_a_tmp_file_the_next_run_removes(tmp_path):
    from vilearn.io import clean_stale_tmp

    code = ("import os, signal; from vilearn.io import atomic_open\n"
            f"with atomic_open({str(tmp_path / 'big.bin')!r}) as f:\n"
            "    f.write(b'x' * 10); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    assert len(list(tmp_path.glob(".big.bin.*.tmp"))) == 1 and not (tmp_path / "big.bin").exists()
    assert clean_stale_tmp(tmp_path) == 1 and not list(tmp_path.iterdir())


def test_checkpoint_folders_get_the_usual_permissions(checkpointed):
    _, run = checkpointed
    umask = os.umask(0)
    os.umask(umask)
    for folder in (run / "checkpoints").glob("step-*"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


def test_generate_refuses_a_tiny_image_and_warns_about_a_coloured_background(trained, tmp_path):
    Image.new("RGB", (1, 1), "white").save(tmp_path / "dot.png")
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "dot.png"), "--model", str(trained),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "dot.png: 1x1 pixels: too small" in said(result)
    photo = np.full((64, 64, 3), (40, 90, 160), np.uint8)  # a blue background, no alpha
    photo[20:44, 20:44] = (200, 30, 30)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "photo.png"), "--model", str(trained),
                                      "--out", str(tmp_path / "o"), "--steps", "1", "--resolution", "16"])
    assert result.exit_code == 0, result.output
    assert "warning: " in said(result) and "background is not white" in said(result)


# --- 9. newcomer papercuts ------------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[1]


def test_the_design_document_exists_and_the_readme_cites_it():
    design = ROOT / "docs" / "design.md"
    assert design.is_file() and "docs/design.md" in (ROOT / "README.md").read_text()
    text = design.read_text()
    for module in ("vilearn.data", "vilearn.vae", "vilearn.grouping", "vilearn.dit", "vilearn.flow",
                   "vilearn.engine", "vilearn.train", "vilearn.metrics", "vilearn.bench", "vilearn.cli"):
        assert f"`{module}`" in text, module


def test_the_tests_point_10_lists_exist():
    listed = re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", __doc__)
    assert len(listed) == 8
    for path, name in listed:
        assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name}"


def test_the_configs_link_leads_to_the_packaged_configs():
    from vilearn.config import CONFIG_DIR

    assert (ROOT / "configs").resolve() == CONFIG_DIR.resolve()
    assert (ROOT / "configs" / "dit-tiny.yaml").is_file()


def test_a_misspelt_config_name_lists_the_packaged_ones():
    with pytest.raises(ConfigError, match=r"packaged: .*dit-tiny.*; did you mean 'dit-tiny'\?"):
        load_config(TrainConfig, "dit-tnyi")


def test_every_config_command_takes_overrides_the_same_two_ways(encoded, tmp_path):
    commands = {  # the command line before the override, and the unknown key a misspelling names
        "train": (["train", "--config", "dit-tiny", "--out", str(tmp_path / "r")], "optim.lrr=1", "lrr"),
        "train-vae": (["train-vae", str(encoded / "data"), "--out", str(tmp_path / "v")], "optim.lrr=1",
                      "lrr"),
        "prepare": (["prepare", "pybullet:random_urdfs", str(tmp_path / "p"), "--config", "prepare-tiny"],
                    "seedd=3", "seedd"),
        "bench convergence": (["bench", "convergence", "--out", str(tmp_path / "b")], "eval_everyy=2",
                              "eval_everyy"),
    }
    for name, (command, override, key) in commands.items():
        for args in ([*command, override], [*command, "--set", override]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, (name, args, result.output)
            assert f"unknown key '{key}'" in said(result), (name, args, result.output)
    assert not any((tmp_path / folder).exists() for folder in "rvpb")  # refused before anything is written


def test_eval_report_explains_its_references_and_clips_intervals_to_the_metric_range(tmp_path):
    from vilearn.bench.evaluate import EvalResult, summarize, write_report

    rows = [{"id": str(i), "view": 0, "seed": 0, "chamfer_l1": c, "fscore@0.05": f}
            for i, (c, f) in enumerate([(0.001, 0.99), (0.5, 1.0), (0.002, 0.98)])]
    results = {name: EvalResult(rows, summarize(rows)) for name in ("model", "ceiling", "chance")}
    raw = results["model"].summary
    assert raw["chamfer_l1"].low < 0 and raw["fscore@0.05"].high > 1  # what a t-interval gives
    text = write_report(tmp_path, results, "t", "cmd").read_text()
    assert "**ceiling** decodes each held-out shape's own latents" in text and "**chance**" in text
    chamfer = next(line for line in text.splitlines() if line.startswith("| chamfer_l1"))
    fscore = next(line for line in text.splitlines() if line.startswith("| fscore@0.05"))
    assert "[0, " in chamfer and ", 1]" in fscore


def test_the_cases_grid_labels_best_and_worst_with_their_scores(monkeypatch, tmp_path):
    import vilearn.bench.evaluate as evaluate
    import vilearn.data.preview as preview

    drawn = {}
    monkeypatch.setattr(preview, "write_grid", lambda path, rows, titles, row_labels=None:
                        drawn.setdefault("labels", row_labels))
    monkeypatch.setattr(preview, "both_sides", lambda *a: [np.zeros((2, 2, 3), np.uint8)] * 2)
    monkeypatch.setattr(preview, "render_mesh", lambda *a: np.zeros((2, 2, 3), np.uint8))
    monkeypatch.setattr(preview, "opposite_camera", lambda camera: camera)

    class Data:
        def __init__(self, root):
            pass

        def camera(self, *a):
            return None

        def mesh(self, *a):
            return {"vertices": None, "faces": None, "face_colors": None}

        def image(self, *a):
            return np.zeros((2, 2, 3), np.uint8)

    monkeypatch.setattr(evaluate, "PreparedDataset", Data)
    rows = [{"id": str(i), "view": 0, "seed": 0, "fscore@0.05": i / 10} for i in range(10)]
    result = evaluate.EvalResult(rows, {}, {(str(i), 0, 0): type("M", (), {"verts": 0, "faces": 0})()
                                             for i in range(10)})
    evaluate.cases_png(tmp_path / "cases.png", result, tmp_path, count=2)
    assert drawn["labels"] == ["worst 1: fscore@0.05 0.000", "worst 2: fscore@0.05 0.100",
                               "best 2: fscore@0.05 0.800", "best 1: fscore@0.05 0.900"]
