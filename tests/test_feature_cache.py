"""Cached DINOv2 features: the stored tokens equal the encoder's on the prepared image, training
on them matches on-the-fly encoding without running the encoder, runs resume, gaps are skipped."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.config import ConfigError, load_config
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.train.config import TrainConfig
from vilearn.train.data import LatentViewDataset
from vilearn.train.trainer import train

transformers = pytest.importorskip("transformers")

SIZE = 56  # the tiny DINOv2's crop: 1 CLS + (56 / 14)^2 = 17 tokens of width 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """A tiny random DINOv2 and its image processor, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("tiny-dinov2")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=SIZE, patch_size=14)
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": SIZE},
                                   crop_size={"height": SIZE, "width": SIZE},
                                   image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return folder


def cache(dataset: Path, dinov2: Path, *extra: str):
    return CliRunner().invoke(app, ["cache-features", str(dataset), "--model", str(dinov2),
                                    "--image-size", str(SIZE), "--batch", "3", *extra])


@pytest.fixture(scope="module")
def cached(encoded, dinov2):
    """The dataset with its features cached once; returns the features folder."""
    result = cache(encoded / "data", dinov2)
    assert result.exit_code == 0, result.output
    folder = encoded / "data" / "features" / f"{dinov2.name}-{SIZE}"
    assert folder.is_dir(), result.output
    return folder


def make_config(root: Path, dinov2: Path, cached: bool, **sections) -> TrainConfig:
    data = {
        "dataset": str(root / "data"),
        "vae": str(root / "vae"),
        "model": {"preset": "tiny", "vape": "va-rope", "context_in_dim": 32},
        "conditioner": {"kind": "dinov2", "model": str(dinov2), "image_size": SIZE,
                        "drop_prob": 0.5, "cached": cached},
        "stages": [{"tokens": 32, "steps": 2, "batch_size": 2}],
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"log_every": 1, "ckpt_every": 2},
        "val": {"every": 2, "shapes": 2, "timesteps": 2},
        **sections,
    }
    path = root / f"config-{len(list(root.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(TrainConfig, path)


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_cached_features_equal_the_encoder_on_the_prepared_image(encoded, dinov2, cached):
    reference = transformers.Dinov2Model.from_pretrained(dinov2).eval()
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    files = sorted(cached.glob("*.safetensors"))
    manifest = [json.loads(line) for line in (encoded / "data" / "manifest.jsonl").read_text().splitlines()]
    assert [f.stem for f in files] == sorted(r["id"] for r in manifest if r["status"] == "ok")
    for file in files:
        views = sorted((encoded / "data" / "shapes" / file.stem / "views").glob("*.png"))
        with safe_open(str(file), "pt") as handle:
            assert handle.metadata()["views"] == str(len(views))
            assert sorted(handle.keys()) == [f"view_{k:03d}" for k in range(len(views))]
            for k, png in enumerate(views):
                stored = handle.get_tensor(f"view_{k:03d}")
                assert stored.dtype == torch.float16 and stored.shape == (17, 32)
                mask = np.load(png.with_suffix(".npz"))["mask"]
                image = prepare_condition_image(np.asarray(Image.open(png).convert("RGB")), SIZE, mask=mask)
                with torch.no_grad():  # 56 px: the processor's resize and crop are the identity
                    expected = reference(pixel_values=((image - mean) / std)[None]).last_hidden_state[0]
                torch.testing.assert_close(stored.float(), expected, atol=2e-3, rtol=1e-3)


def test_second_run_skips_complete_files_and_redoes_a_missing_one(encoded, dinov2, cached):
    files = sorted(cached.glob("*.safetensors"))
    before = {f.name: f.stat().st_mtime_ns for f in files}
    result = cache(encoded / "data", dinov2)
    assert result.exit_code == 0, result.output
    assert f"0 cached, {len(files)} already done, 0 failed" in result.output
    assert {f.name: f.stat().st_mtime_ns for f in files} == before
    # the same encoder given as a conditioner section finds the same folder
    result = CliRunner().invoke(app, ["cache-features", str(encoded / "data"), "--conditioner",
                                      f"{{kind: dinov2, model: {dinov2}, image_size: {SIZE}}}"])
    assert f"0 cached, {len(files)} already done" in result.output, result.output
    removed = load_file(files[0])
    files[0].unlink()
    result = cache(encoded / "data", dinov2)
    assert f"1 cached, {len(files) - 1} already done" in result.output
    again = load_file(files[0])
    assert again.keys() == removed.keys()
    assert all(torch.equal(again[k], removed[k]) for k in removed)  # deterministic


def test_a_broken_shape_fails_alone_and_the_run_goes_on(encoded, dinov2, cached, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(encoded / "data", data, ignore=shutil.ignore_patterns("features"))
    broken = sorted((data / "shapes").iterdir())[1]
    (broken / "views" / "000.png").write_bytes(b"not a png")
    result = cache(data, dinov2)
    assert result.exit_code == 1
    assert f"failed: {broken.name}:" in result.output
    assert "5 cached, 0 already done, 1 failed" in result.output


def test_shards_split_the_work_and_together_write_what_one_run_writes(tiny_dataset, dinov2, tmp_path):
    """``--shard K/N``: each shard encodes only the shapes it owns, none twice, and the shards
    together leave the same files as one unsharded run: the same tokens and metadata."""
    from vilearn.data.shards import Shard

    whole, split = tmp_path / "whole", tmp_path / "split"
    for copy in (whole, split):
        shutil.copytree(tiny_dataset, copy)
    assert cache(whole, dinov2).exit_code == 0
    folder = Path("features") / f"{dinov2.name}-{SIZE}"
    ids = sorted(f.stem for f in (whole / folder).glob("*.safetensors"))
    done = []
    for k in range(2):
        result = cache(split, dinov2, "--shard", f"{k}/2")
        assert result.exit_code == 0, result.output
        done.append(int(result.output.split(" cached")[0].split()[-1]))
        owned = [i for i in ids if any(Shard(j, 2).owns(i) for j in range(k + 1))]
        assert sorted(f.stem for f in (split / folder).glob("*.safetensors")) == owned
    assert sum(done) == len(ids) == 6 and min(done) > 0  # disjoint, covering, both with work
    names = sorted(["info.json", *(f"{i}.safetensors" for i in ids)])
    assert sorted(p.name for p in (split / folder).iterdir()) == names
    assert sorted(p.name for p in (whole / folder).iterdir()) == names
    assert (split / folder / "info.json").read_text() == (whole / folder / "info.json").read_text()
    for shape_id in ids:  # the same tokens, bit for bit (safetensors orders its metadata at random)
        with safe_open(str(split / folder / f"{shape_id}.safetensors"), "pt") as part, \
                safe_open(str(whole / folder / f"{shape_id}.safetensors"), "pt") as one:
            assert part.metadata() == one.metadata() and sorted(part.keys()) == sorted(one.keys())
            assert all(torch.equal(part.get_tensor(k), one.get_tensor(k)) for k in one.keys()), shape_id


def test_feature_name_is_filesystem_safe(tmp_path):
    from vilearn.train.features import feature_name

    assert feature_name("facebook/dinov2-giant", 518) == "facebook--dinov2-giant-518"
    (tmp_path / "my dinov2").mkdir()
    assert feature_name(str(tmp_path / "my dinov2"), 224) == "my-dinov2-224"
    assert feature_name("org/name:v1?", 56) == "org--name-v1-56"


def test_cache_features_errors_name_the_input(encoded, dinov2, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["cache-features", str(encoded / "data")])
    assert result.exit_code == 2 and "either --conditioner" in result.output
    result = runner.invoke(app, ["cache-features", str(encoded / "data"), "--conditioner", "dit-tiny"])
    assert result.exit_code == 2 and "kind 'patch' trains jointly" in result.output
    result = runner.invoke(app, ["cache-features", str(encoded / "data"), "--conditioner",
                                 f"{{kind: dinov2, model: {tmp_path / 'missing'}}}"])
    assert result.exit_code == 2 and "cannot load DINOv2" in result.output
    result = runner.invoke(app, ["cache-features", str(tmp_path), "--model", str(dinov2)])
    assert result.exit_code == 2 and "no manifest.jsonl" in result.output
    with pytest.raises(ConfigError, match="cached: only a frozen encoder"):
        load_config(TrainConfig, "dit-tiny", ["conditioner.cached=true"])


def test_training_on_cached_features_matches_on_the_fly_and_never_runs_the_encoder(
        encoded, dinov2, cached, tmp_path, monkeypatch):
    train(make_config(encoded, dinov2, cached=False), tmp_path / "fly")
    from vilearn.dit.conditioner import DinoV2Encoder

    calls = []
    forward = DinoV2Encoder.forward
    monkeypatch.setattr(DinoV2Encoder, "forward", lambda self, images: calls.append(len(images))
                        or forward(self, images))
    train(make_config(encoded, dinov2, cached=True), tmp_path / "cached")
    assert calls == []  # the training steps and the held-out loss read the cache
    fly, from_cache = log_rows(tmp_path / "fly"), log_rows(tmp_path / "cached")
    losses = [(r["step"], r["loss"]) for r in fly if "grad_norm" in r]
    cached_losses = [(r["step"], r["loss"]) for r in from_cache if "grad_norm" in r]
    assert [s for s, _ in cached_losses] == [s for s, _ in losses] == [1, 2]
    np.testing.assert_allclose([v for _, v in cached_losses], [v for _, v in losses], rtol=2e-3)
    val, cached_val = ([r["loss"] for r in rows if r.get("split") == "val"] for rows in (fly, from_cache))
    assert len(val) == len(cached_val) == 1
    np.testing.assert_allclose(cached_val, val, rtol=2e-3)


def test_denoiser_on_cached_features_equals_it_on_images_with_the_same_dropout(encoded, encoded_key, dinov2,
                                                                               cached):
    """Sensitive where a 2-step loss is not (the zero-initialised final layer hides the condition):
    random weights everywhere, the same views read both ways, half the conditions dropped."""
    from vilearn.train.trainer import build_model

    torch.manual_seed(0)
    on_images = build_model(make_config(encoded, dinov2, cached=False)).train()
    on_features = build_model(make_config(encoded, dinov2, cached=True)).train()
    with torch.no_grad():
        for param in on_images.dit.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    on_features.load_state_dict(on_images.state_dict())
    images = LatentViewDataset(encoded / "data", encoded_key, 32, None, SIZE)
    features = LatentViewDataset(encoded / "data", encoded_key, 32, None, SIZE, features=cached.name)
    keys = [(i, 7 * i) for i in range(len(images))]
    batch_images = torch.stack([images[key]["image"] for key in keys])
    batch_features = torch.stack([features[key]["features"] for key in keys])
    assert [images[k]["view"] for k in keys] == [features[k]["view"] for k in keys]
    assert batch_features.dtype == torch.float16
    x, t = torch.randn(len(keys), 32, 8), torch.rand(len(keys))
    visible = torch.rand(len(keys), 32) < 0.3

    def predict(model, cond):
        return model(x, t, cond, visible, torch.Generator().manual_seed(1))

    out_images, out_features = predict(on_images, batch_images), predict(on_features, batch_features)
    torch.testing.assert_close(out_features, out_images, atol=5e-3, rtol=5e-3)
    # independent truth for the dropout: the draws drop_condition makes from that generator
    drop = torch.rand(len(keys), generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < drop.sum() < len(keys)
    tokens = on_images.conditioner.encoder(batch_images)
    tokens = torch.where(drop[:, None, None], torch.zeros_like(tokens), tokens)
    torch.testing.assert_close(out_features, on_images.dit(x, t, tokens, visible=visible),
                               atol=5e-3, rtol=5e-3)
    assert (out_features - on_images.dit(x, t, on_images.conditioner.encoder(batch_images),
                                         visible=visible)).abs().max() > 0.05  # dropout mattered


def test_sample_grid_with_cached_features(encoded, dinov2, cached, tmp_path):
    config = make_config(encoded, dinov2, cached=True,
                         val={"every": 2, "shapes": 1, "timesteps": 1, "sample_every": 2,
                              "sample_count": 1, "sample_steps": 2, "resolution": 32})
    last = train(config, tmp_path / "run")
    assert Path(last["val"]["samples"]).is_file() and "loss" in last["val"]


def test_shapes_without_features_are_skipped_with_a_count(encoded, encoded_key, dinov2, cached, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(encoded / "data", data)
    folder = data / "features" / cached.name
    train_ids = [r["id"] for r in map(json.loads, (data / "manifest.jsonl").read_text().splitlines())
                 if r["split"] == "train"]
    (folder / f"{train_ids[0]}.safetensors").unlink()
    full = LatentViewDataset(data, encoded_key, 32, "train", SIZE)
    partial = LatentViewDataset(data, encoded_key, 32, "train", SIZE, features=cached.name)
    assert len(partial) == len(full) - 1 and partial.skipped["no cached features"] == 1
    assert train_ids[0] not in [shape_id for shape_id, _ in partial.items]
    item = partial[0, 0]
    assert "image" not in item and item["features"].shape == (17, 32)

    run = tmp_path / "run"
    train(make_config(encoded, dinov2, cached=True, dataset=str(data), val={"every": 0}), run)
    stage = next(r for r in log_rows(run) if "skipped" in r)
    assert stage["skipped"]["no cached features"] == 1 and stage["items"] == len(full) - 1

    shutil.rmtree(data / "features")
    with pytest.raises(ConfigError, match="run 'vilearn cache-features"):
        train(make_config(encoded, dinov2, cached=True, dataset=str(data)), tmp_path / "run2")
    assert not (tmp_path / "run2").exists()  # failed at start, before the run folder
