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


def test_shards_split_the_work_and_merge_into_the_unsharded_manifest(tmp_path):
    runner = CliRunner()
    base = ["prepare", "pybullet:random_urdfs", "-k", "5", "--workers", "1", *TINY]
    assert runner.invoke(app, [*base[:2], str(tmp_path / "whole"), *base[2:]]).exit_code == 0
    sharded = tmp_path / "sharded"
    first = runner.invoke(app, [*base[:2], str(sharded), *base[2:], "--shard", "0/2"])
    assert first.exit_code == 0, first.output
    early = runner.invoke(app, ["merge-shards", str(sharded)])
    assert early.exit_code == 2 and "1 of 2 shards have no part yet (shards 1)" in early.output
    assert runner.invoke(app, [*base[:2], str(sharded), *base[2:], "--shard", "1/2"]).exit_code == 0
    merged = runner.invoke(app, ["merge-shards", str(sharded)])
    assert merged.exit_code == 0 and "5 shapes from 2 shards" in merged.output
    parts = [[r["id"] for r in read_manifest(sharded / "manifest.d" / f"shard-{k}-of-2.jsonl")]
             for k in (0, 1)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    whole = list(read_manifest(tmp_path / "whole" / "manifest.jsonl"))
    assert list(read_manifest(sharded / "manifest.jsonl")) == whole
    assert sorted(p.name for p in (sharded / "shapes").iterdir()) == sorted(parts[0] + parts[1])
    bad = runner.invoke(app, [*base[:2], str(sharded), *base[2:], "--shard", "2/2"])
    assert bad.exit_code == 2 and "need 0 <= K < N" in bad.output


STALLED_AND_CRASHING = """
import os, sys, time
from vilearn.config import load_config
from vilearn.data import prepare

process_shape = prepare.process_shape


def stalling_or_crashing(source, layout, config):  # runs in the worker (forked: patched there too)
    if source.id == "stall":  # a pathological mesh, a stalled file system: it never returns
        time.sleep(3600)
    if source.id == "crash":  # a crash in native code
        os._exit(3)
    return process_shape(source, layout, config)


prepare.process_shape = stalling_or_crashing
config = load_config(prepare.PrepareConfig, "prepare-tiny", [f"time_limit_s={sys.argv[3]}"])
summary = prepare.prepare_dataset(sys.argv[1], sys.argv[2], config, workers=2)
print(summary.ok, summary.failed, summary.skipped)
"""


def test_a_stalled_or_crashed_shape_is_recorded_and_the_run_goes_on(tmp_path):
    meshes, out = tmp_path / "meshes", tmp_path / "out"
    meshes.mkdir()
    for name in ("good", "stall", "crash"):
        trimesh.creation.box().export(meshes / f"{name}.obj")
    script = tmp_path / "run.py"
    script.write_text(STALLED_AND_CRASHING)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), str(meshes), str(out), "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "0"] and time.perf_counter() - start < 60
    rows = {row["id"]: row for row in read_manifest(out / "manifest.jsonl")}
    assert rows["good"]["status"] == "ok"
    assert rows["stall"]["reason"].startswith("time limit: the shape took more than 3 s")
    assert rows["crash"]["reason"].startswith("worker died") and "exit code 3" in rows["crash"]["reason"]
    assert sorted(p.name for p in (out / "shapes" / "stall").iterdir()) == ["record.json"]
    # a rerun keeps the records (same limit: nothing is waited for again) ...
    again = subprocess.run([sys.executable, str(script), str(meshes), str(out), "3"],
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.split() == ["1", "2", "3"], again.stderr
    # ... and a longer limit retries the shapes that a shorter one stopped
    from vilearn.data.prepare import _retry

    assert _retry(rows["stall"], 10.0) and _retry(rows["stall"], 0.0) and not _retry(rows["stall"], 3.0)
    assert not any(_retry(rows[i], 10.0) for i in ("crash", "good"))
