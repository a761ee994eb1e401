"""prepare: resumable after a hard kill, robust to bad inputs, correct exit status."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.data.dataset import PreparedDataset, ShapeDataset
from vilearn.data.prepare import prepare_dataset, read_manifest

TINY = ["--config", "prepare-tiny"]


def _snapshot(root: Path) -> dict[str, object]:
    """Every file of a dataset by relative path: arrays for .npz, bytes otherwise."""
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        key = str(path.relative_to(root))
        if path.suffix == ".npz":
            with np.load(path) as data:
                files[key] = {name: data[name].tobytes() for name in data.files}
        else:
            files[key] = path.read_bytes()
    return files


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_dataset(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    command = [sys.executable, "-m", "vilearn", "prepare", "pybullet:random_urdfs"]
    args = ["--limit", "10", "--workers", "1", *TINY]
    subprocess.run([*command, str(whole), *args], check=True, capture_output=True)

    process = subprocess.Popen([*command, str(killed), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(killed.glob("shapes/*/record.json"))) < 4 and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(killed.glob("shapes/*/record.json")))
    assert 4 <= done_before < 10, "the kill must land half-way through"
    # a half-written shape, as a crash between two files would leave it
    half = killed / "shapes" / "009"
    (half / "views").mkdir(parents=True, exist_ok=True)
    (half / "surface.npz").write_bytes(b"truncated")

    result = CliRunner().invoke(app, ["prepare", "pybullet:random_urdfs", str(killed), *args])
    assert result.exit_code == 0, result.output
    assert _snapshot(killed) == _snapshot(whole)
    rows = list(read_manifest(killed / "manifest.jsonl"))
    assert [r["id"] for r in rows] == sorted({r["id"] for r in rows}) and len(rows) == 10


def test_rerun_skips_finished_shapes(tmp_path, tiny_prepare_config):
    first = prepare_dataset("pybullet:random_urdfs", tmp_path, tiny_prepare_config, limit=3)
    second = prepare_dataset("pybullet:random_urdfs", tmp_path, tiny_prepare_config, limit=4)
    assert (first.ok, first.skipped) == (3, 0)
    assert (second.ok, second.skipped) == (4, 3)
    assert len(list(read_manifest(tmp_path / "manifest.jsonl"))) == 4


def _write_bad_inputs(folder: Path) -> dict[str, str]:
    """Each bad asset with the words its recorded reason must contain."""
    folder.mkdir()
    (folder / "empty.obj").write_bytes(b"")
    (folder / "garbage.glb").write_bytes(os.urandom(2048))
    tetrahedron_faces = "f 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"
    (folder / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\n" + tetrahedron_faces)
    (folder / "nofaces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (folder / "point.obj").write_text("v 0.5 0.5 0.5\nv 0.5 0.5 0.5\nv 0.5 0.5 0.5\nf 1 2 3\n")
    (folder / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n")
    rng = np.random.default_rng(0)
    n = 1_000_000
    big = trimesh.Trimesh(rng.random((n // 2, 3)), rng.integers(0, n // 2, (n, 3)), process=False)
    big.export(folder / "million.ply")
    trimesh.creation.box().export(folder / "good.obj")
    return {
        "empty": "empty file",
        "garbage": "not a readable mesh",
        "nan": "NaN",
        "nofaces": "no triangle faces",
        "point": "zero extent",
        "flat": "flat mesh",
        "million": "too many faces",
    }


def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path):
    expected = _write_bad_inputs(tmp_path / "meshes")
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "meshes"), str(tmp_path / "out"), *TINY])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in read_manifest(tmp_path / "out" / "manifest.jsonl")}
    assert rows["good"]["status"] == "ok"
    for shape_id, words in expected.items():
        assert rows[shape_id]["status"] == "failed"
        assert words in rows[shape_id]["reason"], rows[shape_id]["reason"]
    assert "7 failed" in result.output

    strict = CliRunner().invoke(
        app, ["prepare", str(tmp_path / "meshes"), str(tmp_path / "out"), *TINY, "--strict"]
    )
    assert strict.exit_code == 1


def test_exit_status_is_nonzero_when_nothing_succeeds(tmp_path):
    (tmp_path / "meshes").mkdir()
    (tmp_path / "meshes" / "empty.obj").write_bytes(b"")
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "meshes"), str(tmp_path / "out"), *TINY])
    assert result.exit_code == 1


def test_different_settings_on_an_existing_dataset_are_refused(tmp_path):
    runner = CliRunner()
    command = ["prepare", "pybullet:random_urdfs", str(tmp_path), "-k", "1", *TINY]
    assert runner.invoke(app, command).exit_code == 0
    result = runner.invoke(app, [*command, "-v", "3"])
    assert result.exit_code == 2 and "different settings" in result.output


def test_scene_files_are_flattened_with_their_transforms(tmp_path):
    scene = trimesh.Scene()
    for x in (-2, 2):
        move = trimesh.transformations.translation_matrix((x, 0, 0))
        scene.add_geometry(trimesh.creation.box(extents=(1, 1, 1)), transform=move)
    (tmp_path / "m").mkdir()
    scene.export(tmp_path / "m" / "pair.glb")
    from vilearn.data.mesh import load_mesh

    mesh = load_mesh(tmp_path / "m" / "pair.glb")
    assert np.allclose(mesh.vertices.min(axis=0), (-2.5, -0.5, -0.5))
    assert np.allclose(mesh.vertices.max(axis=0), (2.5, 0.5, 0.5))


def test_shape_dataset_items_come_from_the_stored_files(tiny_dataset):
    data = PreparedDataset(tiny_dataset)
    dataset = ShapeDataset(tiny_dataset, num_surface=300, num_queries=200, near_fraction=0.25)
    item = dataset[0]
    assert item["surface"].shape == (300, 6) and item["queries"].shape == (200, 3)
    occupancy = data.occupancy(item["id"])
    table = {tuple(p): l for p, l in zip(occupancy["uniform_points"], occupancy["uniform_labels"])}
    table.update({tuple(p): l for p, l in zip(occupancy["near_points"], occupancy["near_labels"])})
    for point, label in zip(item["queries"].numpy(), item["labels"].numpy()):
        assert table[tuple(point)] == bool(label)
    normals = item["surface"][:, 3:].numpy()
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-4)
    assert set(dataset.ids).isdisjoint(PreparedDataset(tiny_dataset).ids("val"))
