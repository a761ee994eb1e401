"""Condition images cached at the conditioner's size (``vilearn cache-images``): the loader
serves the very tensors it prepared on the fly, so training is identical with the cache; runs
resume, failures are per shape, shards split the work."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from test_train import make_config, train_losses
from vilearn.cli import app
from vilearn.data.dataset import PreparedDataset
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.train.data import LatentViewDataset
from vilearn.train.images import images_dir
from vilearn.train.trainer import train


@pytest.fixture
def data(encoded, tmp_path):
    """A private copy of the encoded dataset and its VAE (the cache is written into it)."""
    shutil.copytree(encoded / "data", tmp_path / "data")
    shutil.copytree(encoded / "vae", tmp_path / "vae")
    return tmp_path / "data"


def cache(data, *args):
    return CliRunner().invoke(app, ["cache-images", str(data), *args])


@pytest.mark.parametrize("size, crop", [(32, True), (48, False)])
def test_cached_images_are_the_tensors_prepared_on_the_fly(data, encoded_key, size, crop):
    on_the_fly = LatentViewDataset(data, encoded_key, 32, None, size, crop=crop)
    keys = [(i, 11 * i + 3) for i in range(len(on_the_fly))]
    before = [on_the_fly[key] for key in keys]
    result = cache(data, "--image-size", str(size), *([] if crop else ["--no-crop"]))
    assert result.exit_code == 0, result.output
    assert f"{len(PreparedDataset(data).ids())} cached" in result.output
    cached = LatentViewDataset(data, encoded_key, 32, None, size, crop=crop)
    assert cached.ready == {shape_id for shape_id, _ in cached.items}
    dataset = PreparedDataset(data)
    for key, old in zip(keys, before):
        new = cached[key]
        assert new.keys() == old.keys() and new["view"] == old["view"]
        for name in ("image", "latents", "visible"):
            assert torch.equal(new[name], old[name]), name
        # the independent truth: the view's PNG and mask through the preprocessing function
        png = np.asarray(Image.open(dataset.layout.view_image(new["id"], new["view"])).convert("RGB"))
        mask = dataset.view(new["id"], new["view"])["mask"]
        assert torch.equal(new["image"], prepare_condition_image(png, size=size, mask=mask, crop=crop))


def test_training_on_the_cache_is_the_same_run(data, tmp_path):
    config = make_config(data.parent, stages=[{"tokens": 32, "steps": 3, "batch_size": 3}],
                         val={"every": 0})
    train(config, tmp_path / "fly")
    assert cache(data, "--image-size", str(config.conditioner.image_size)).exit_code == 0
    train(config, tmp_path / "cached")
    assert train_losses(tmp_path / "cached") == train_losses(tmp_path / "fly")
    rows = (tmp_path / "cached" / "log.jsonl").read_text()
    assert f'"cached_images": {len(PreparedDataset(data).ids("train"))}' in rows


def test_resumes_records_failures_and_splits_into_shards(data):
    ids = PreparedDataset(data).ids()
    first = cache(data, "--image-size", "32", "--shard", "0/2")
    second = cache(data, "--image-size", "32", "--shard", "1/2")
    assert first.exit_code == second.exit_code == 0
    done = [int(r.output.split(" cached")[0].split()[-1]) for r in (first, second)]
    assert sum(done) == len(ids) and min(done) > 0  # disjoint shards that cover the dataset
    folder = images_dir(data, 32)
    assert sorted(p.stem for p in folder.glob("*.safetensors")) == sorted(ids)
    again = cache(data, "--image-size", "32")
    assert again.exit_code == 0 and f"0 cached, {len(ids)} already done" in again.output
    (folder / f"{ids[0]}.safetensors").unlink()
    (data / "shapes" / ids[0] / "views" / "000.npz").write_bytes(b"broken")
    broken = cache(data, "--image-size", "32")
    assert broken.exit_code == 1 and f"failed: {ids[0]}" in broken.output
    assert f"0 cached, {len(ids) - 1} already done, 1 failed" in broken.output
    assert cache(data, "--image-size", "32", "--shard", "2/2").exit_code == 2
