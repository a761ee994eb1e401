"""``vilearn encode`` builds the input each VAE expects and refuses a dataset that cannot."""

import dataclasses

import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.vae import VecSetVAE, preset, save_vae
from vilearn.vae.encode import latents_dir, read_latents


@pytest.fixture(scope="module")
def cube_and_ball(tmp_path_factory):
    """A cube and a sphere prepared with sharp samples, and a tiny hunyuan3d-vae-v2-0-withencoder
    (its input: 20 points per token, half on sharp edges, xyz + normal + flag)."""
    from vilearn.config import load_config
    from vilearn.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("cube-ball")
    (root / "meshes").mkdir()
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(root / "meshes" / "cube.obj")
    trimesh.creation.icosphere(subdivisions=3).export(root / "meshes" / "ball.obj")
    tiny = load_config(PrepareConfig, "prepare-tiny")
    config = dataclasses.replace(tiny, sharp_points=1024, views=dataclasses.replace(tiny.views, count=0))
    assert prepare_dataset(root / "meshes", root / "data", config).ok == 2
    torch.manual_seed(0)
    architecture = dataclasses.replace(preset("hunyuan3d-vae-v2-0-withencoder"), width=32, heads=4,
                                       num_encoder_layers=1, num_decoder_layers=1, embed_dim=8)
    save_vae(root / "withencoder", VecSetVAE(architecture).eval())
    return root


def encode(root, *args):
    return CliRunner().invoke(app, ["encode", str(root / "data"), "--vae", str(root / "withencoder"),
                                    *args])


def test_sharp_tokens_are_anchored_on_the_cubes_edges(cube_and_ball):
    from vilearn.data.dataset import PreparedDataset
    from vilearn.vae.identity import load_identified

    root = cube_and_ball
    result = encode(root, "--tokens", "32,48")
    assert result.exit_code == 0, result.output
    key = load_identified(root / "withencoder")[1].key  # withencoder-<hash8>

    data = PreparedDataset(root / "data")
    half = float(np.abs(data.mesh("cube")["vertices"]).max())
    for n in (32, 48):
        cube = read_latents(latents_dir(root / "data", key, n) / "cube.safetensors")
        anchors = cube["anchors"].numpy()
        assert cube["mean"].shape == (n, 8)
        on_edge = (np.abs(np.abs(anchors) - half) < 1e-5).sum(axis=1) >= 2
        assert not on_edge[: n // 2].any() and on_edge[n // 2:].all()  # uniform tokens, then sharp
        ball = read_latents(latents_dir(root / "data", key, n) / "ball.safetensors")
        radius = np.linalg.norm(ball["anchors"].numpy(), axis=1)  # no sharp edge: all on the sphere
        assert np.ptp(radius) < 0.01 * radius.mean()


def test_a_dataset_that_cannot_make_the_input_is_refused(cube_and_ball, tmp_path):
    import shutil

    root = cube_and_ball
    result = encode(root, "--tokens", "128", "--name", "big")  # 2560 points > the 2048 stored
    assert result.exit_code == 2
    assert f"dataset {root / 'data'} does not fit VAE 'big-" in result.output
    assert "shape ball: 2048 uniform and 0 sharp-edge samples stored, fewer than the 2560 + 0 that " \
           "128 tokens read" in " ".join(result.output.split())

    old = tmp_path / "old"  # a dataset prepared before sharp samples existed
    shutil.copytree(root / "data", old, ignore=shutil.ignore_patterns("latents"))
    for path in old.glob("shapes/*/surface.npz"):
        with np.load(path) as arrays:
            np.savez(path, points=arrays["points"], normals=arrays["normals"])
    result = CliRunner().invoke(app, ["encode", str(old), "--vae", str(root / "withencoder"),
                                      "--tokens", "32"])
    assert result.exit_code == 2 and "no sharp-edge samples stored" in result.output
    # the same VAE told to read uniform points only works on it
    result = CliRunner().invoke(app, ["encode", str(old), "--vae", str(root / "withencoder"),
                                      "--tokens", "32", "--sharp-fraction", "0"])
    assert result.exit_code == 0, result.output


def test_other_input_settings_on_existing_latents_are_refused(cube_and_ball):
    root = cube_and_ball
    assert encode(root, "--tokens", "32", "--name", "same").exit_code == 0
    result = encode(root, "--tokens", "32", "--name", "same", "--points-per-token", "10")
    assert result.exit_code == 2 and "another encoder input" in result.output
