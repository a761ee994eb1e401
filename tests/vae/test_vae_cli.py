"""``vilearn encode`` and ``vilearn decode`` end to end on a tiny random VAE."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.vae import VAEConfig, VecSetVAE
from vilearn.vae.encode import read_latents
from vilearn.vae.loading import save_vae
from vilearn.vae.synthetic import make_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    dataset = make_dataset(root / "data", num_shapes=3, num_val=1, seed=5, num_surface=1024,
                           num_uniform=256, num_near=256)
    torch.manual_seed(0)
    vae = VecSetVAE(VAEConfig(embed_dim=4, width=32, heads=4, num_decoder_layers=1,
                              num_latents=32, num_freqs=4))
    save_vae(root / "my-vae", vae)
    return dataset, root / "my-vae"


def test_encode_writes_latents_stats_and_resumes(setup):
    dataset, vae = setup
    runner = CliRunner()
    result = runner.invoke(app, ["encode", str(dataset), "--vae", str(vae), "--tokens", "16,64",
                                 "--surface-points", "512"])
    assert result.exit_code == 0, result.output
    (folder,) = (dataset / "latents").iterdir()  # keyed by the VAE's identity: my-vae-<hash8>
    owner = json.loads((folder / "vae.json").read_text())
    assert folder.name == f"my-vae-{owner['hash'][:8]}" and owner["path"] == str(vae.resolve())
    files = sorted((folder / "64").glob("*.safetensors"))
    assert [f.stem for f in files] == ["synthetic-0000", "synthetic-0001", "synthetic-0002"]
    big = read_latents(folder / "64" / "synthetic-0001.safetensors")
    small = read_latents(folder / "16" / "synthetic-0001.safetensors")
    assert big["mean"].shape == (64, 4) and big["logvar"].shape == (64, 4)
    assert big["anchors"].shape == (64, 3) and big["anchor_index"].dtype == torch.int64
    # Nested token order: the 16-token anchors are the first 16 of the 64-token ones.
    assert torch.equal(small["anchor_index"], big["anchor_index"][:16])
    stats = json.loads((folder / "64" / "stats.json").read_text())
    assert stats["shapes"] == 3 and stats["tokens_total"] == 192 and len(stats["std"]) == 4
    everything = torch.cat([read_latents(f)["mean"] for f in files])
    assert torch.allclose(torch.tensor(stats["mean"]), everything.double().mean(0).float(),
                          atol=1e-5)
    # Resumable: a second run leaves existing files untouched.
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert runner.invoke(app, ["encode", str(dataset), "--vae", str(vae), "--tokens", "64",
                               "--surface-points", "512"]).exit_code == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # Different encoder input for the same latents folder is refused.
    again = runner.invoke(app, ["encode", str(dataset), "--vae", str(vae), "--tokens", "64"])
    assert again.exit_code != 0 and "surface_points: 512 here, 8192 now" in again.output


def test_decode_writes_a_mesh(setup, tmp_path):
    dataset, vae = setup
    runner = CliRunner()
    runner.invoke(app, ["encode", str(dataset), "--vae", str(vae), "--tokens", "16",
                        "--surface-points", "512"])
    latents = next((dataset / "latents").glob("my-vae-*/16/synthetic-0000.safetensors"))
    out = tmp_path / "shape.ply"
    result = runner.invoke(app, ["decode", str(latents), "--vae", str(vae), "--out", str(out),
                                 "--resolution", "32", "--coarse", "16"])
    if "no surface" in result.output:
        pytest.skip("this random decoder has no zero crossing")
    assert result.exit_code == 0, result.output
    import trimesh

    assert len(trimesh.load(out, force="mesh").faces) > 0


def test_bad_tokens_are_a_clear_error(setup):
    dataset, vae = setup
    result = CliRunner().invoke(app, ["encode", str(dataset), "--vae", str(vae), "--tokens", "x"])
    assert result.exit_code == 2 and "--tokens" in result.output


def test_train_vae_command_writes_a_complete_run(setup, tmp_path):
    dataset, _ = setup
    sets = ["model.width=32", "model.heads=4", "model.num_decoder_layers=1", "data.tokens=[16]",
            "data.num_surface=256", "data.num_queries=256", "train.steps=2",
            "train.batch_size=2", "train.log_every=1", "val.shapes=1", "val.resolution=16",
            "val.mesh_points=200"]
    args = ["train-vae", str(dataset), "--config", "vae-tiny", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for path in ("config.yaml", "git.txt", "log.jsonl", "vae/model.safetensors",
                 "vae/config.json", "checkpoints/latest", "val/step-0000002.png"):
        assert (run / path).is_file(), path
    assert list((run / "tb").glob("events.*"))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert {"iou_uniform", "iou_near", "chamfer", "fscore"} <= set(records[-1])
    bad = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "other"), "--set", "optim.lrr=1"])
    assert bad.exit_code == 2 and "lrr" in bad.output
