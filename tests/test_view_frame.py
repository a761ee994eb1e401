"""View-frame datasets: every derived file agrees with a fresh render of the derived mesh."""

import json

import numpy as np
import pytest

from vilearn.data.dataset import PreparedDataset
from vilearn.data.render import Raycaster
from vilearn.data.view_frame import derive_view_frame, view_shape_id


@pytest.fixture(scope="module")
def derived(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("view-frame") / "data"
    count = derive_view_frame(tiny_dataset, root)
    return PreparedDataset(tiny_dataset), PreparedDataset(root), count


def test_one_shape_per_view_with_the_source_split(derived):
    src, dst, count = derived
    expected = {view_shape_id(row["id"], k): row["split"]
                for row in src.rows() for k in range(row["views"])}
    assert count == len(expected) == 12  # 6 shapes x 2 views
    assert {row["id"]: row["split"] for row in dst.rows()} == expected
    assert all(row["views"] == 1 for row in dst.rows())


def test_camera_sits_on_the_minus_z_axis_looking_along_plus_z(derived):
    src, dst, _ = derived
    for row in src.rows():
        for k in range(row["views"]):
            camera = dst.camera(view_shape_id(row["id"], k), 0)
            np.testing.assert_allclose(camera.c2w[:3, :3], np.eye(3), atol=1e-6)
            radius = np.linalg.norm(src.camera(row["id"], k).center)
            scale = 1 / np.linalg.norm(src.mesh(row["id"])["vertices"], axis=1).max()
            np.testing.assert_allclose(camera.center, [0, 0, -radius * scale], atol=1e-4)


def test_mesh_fits_the_unit_sphere_and_keeps_its_shape(derived):
    src, dst, _ = derived
    for row in src.rows():
        original = src.mesh(row["id"])["vertices"].astype(np.float64)
        moved = dst.mesh(view_shape_id(row["id"], 1))["vertices"].astype(np.float64)
        assert np.linalg.norm(moved, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        # a similarity: all pairwise distances scale by the same factor
        before = np.linalg.norm(original - np.roll(original, 1, axis=0), axis=1)
        after = np.linalg.norm(moved - np.roll(moved, 1, axis=0), axis=1)
        keep = before > 1e-3
        np.testing.assert_allclose(after[keep] / before[keep], after[keep][0] / before[keep][0], rtol=1e-4)


def test_stored_view_matches_a_render_of_the_derived_mesh(derived):
    src, dst, _ = derived
    for shape_id in dst.ids()[:4]:
        mesh = dst.mesh(shape_id)
        camera = dst.camera(shape_id, 0)
        view = dst.view(shape_id, 0)
        render = Raycaster(mesh["vertices"], mesh["faces"]).render(camera)
        assert (render.mask != view["mask"]).mean() < 0.002  # a few silhouette pixels may flip
        both = render.mask & view["mask"]
        np.testing.assert_allclose(render.depth[both], view["depth"][both], atol=1e-3)
        # the visible points are first hits of this camera: they project in front, onto the mask
        uv, z = camera.project(view["visible_points"].astype(np.float64))
        assert (z > 0).all()
        rows, cols = np.floor(uv[:, 1]).astype(int), np.floor(uv[:, 0]).astype(int)
        assert view["mask"][rows.clip(0, camera.height - 1), cols.clip(0, camera.width - 1)].mean() > 0.99


def test_occupancy_and_surface_move_with_the_mesh(derived):
    import igl
    import trimesh

    src, dst, _ = derived
    shape_id = dst.ids()[0]
    mesh = dst.mesh(shape_id)
    occupancy = dst.occupancy(shape_id)
    inside = trimesh.Trimesh(mesh["vertices"], mesh["faces"], process=False).contains(
        occupancy["uniform_points"][:300])
    assert (inside == occupancy["uniform_labels"][:300]).mean() > 0.97
    surface = dst.surface(shape_id)
    squared, _, _ = igl.point_mesh_squared_distance(
        surface["points"][:200].astype(np.float64), mesh["vertices"].astype(np.float64),
        mesh["faces"].astype(np.int64))
    assert np.sqrt(squared).max() < 1e-4


def test_resumes_and_refuses_another_source(derived, tiny_dataset, tmp_path):
    src, dst, count = derived
    before = (dst.root / "manifest.jsonl").read_text()
    assert derive_view_frame(tiny_dataset, dst.root) == count
    assert (dst.root / "manifest.jsonl").read_text() == before
    other = tmp_path / "other"
    (other).mkdir()
    (other / "manifest.jsonl").write_text("")
    (other / "dataset.json").write_text(json.dumps({"prepare": {"seed": 1}}))
    with pytest.raises(ValueError, match="derived from other settings"):
        derive_view_frame(other, dst.root)
