"""Metrics against analytic truths: spheres, boxes and known samples."""

import math

import numpy as np
import pytest
import trimesh

from vilearn.data.camera import orbit_camera
from vilearn.data.dataset import PreparedDataset
from vilearn.data.inside import inside
from vilearn.data.render import Raycaster
from vilearn.metrics import (
    ConditionView,
    Matching,
    Reference,
    aggregate,
    chamfer_l1,
    chamfer_l2,
    evaluate_mesh,
    face_components,
    floaters,
    fscore,
    image_shape_alignment,
    mean_ci,
    normal_consistency,
    precision_recall,
    seen_points,
    split_fidelity,
    volume_iou,
)


def _sphere_points(count, radius, center=(0.0, 0.0, 0.0), seed=0):
    """Exactly uniform points on a sphere (normalised Gaussians) and their outward normals."""
    normals = np.random.default_rng(seed).normal(size=(count, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return radius * normals + np.asarray(center), normals


def _view_of(mesh, camera):
    render = Raycaster(mesh.vertices, mesh.faces).render(camera)
    return ConditionView(camera, render.mask, render.depth)


# ---------------------------------------------------------------- floaters


def test_two_disjoint_spheres_have_two_components_and_the_small_ones_area():
    big = trimesh.creation.icosphere(3, radius=0.5)
    small = trimesh.creation.icosphere(3, radius=0.25).apply_translation([0.9, 0, 0])
    both = trimesh.util.concatenate([big, small])
    count, label = face_components(both.vertices, both.faces)
    assert count == 2
    assert (label[: len(big.faces)] == 0).all() and (label[len(big.faces):] == 1).all()
    # same tessellation, so areas scale exactly with r^2: 0.25^2 / (0.5^2 + 0.25^2) = 0.2
    result = floaters(both.vertices, both.faces)
    assert result["components"] == 2
    assert result["floater_area"] == pytest.approx(0.2, rel=1e-9)


def test_duplicated_vertices_are_merged_before_counting():
    sphere = trimesh.creation.icosphere(2)
    soup = sphere.triangles.reshape(-1, 3)  # every face with its own three vertex copies
    faces = np.arange(len(soup)).reshape(-1, 3)
    assert floaters(soup, faces) == {"components": 1.0, "floater_area": 0.0}


def test_a_mesh_without_faces_has_no_components():
    assert floaters(np.zeros((3, 3)), np.zeros((0, 3), np.int64)) == {"components": 0.0, "floater_area": 0.0}
    with pytest.raises(ValueError, match="out of range"):
        face_components(np.zeros((3, 3)), np.array([[0, 1, 3]]))


# ---------------------------------------------------------------- Chamfer, F-score, normals


def test_a_shape_against_itself_has_chamfer_zero_and_fscore_one():
    points, normals = _sphere_points(5000, 0.5)
    matching = Matching.of(points, points)
    assert chamfer_l1(matching) == 0 and chamfer_l2(matching) == 0
    assert all(fscore(matching, t) == 1.0 for t in (0.01, 0.02, 0.05))
    assert normal_consistency(matching, normals, normals) == pytest.approx(1.0)


def test_concentric_spheres_are_their_radius_difference_apart():
    """The nearest point of a concentric sphere lies on the same ray: d = |r1 - r2| both ways."""
    outer, _ = _sphere_points(20_000, 0.5, seed=1)
    inner, _ = _sphere_points(20_000, 0.35, seed=2)
    matching = Matching.of(outer, inner)
    assert chamfer_l1(matching) == pytest.approx(0.15, rel=5e-3)
    assert chamfer_l2(matching) == pytest.approx(0.15**2, rel=1e-2)
    assert precision_recall(matching, 0.14) == (0.0, 0.0)
    assert fscore(matching, 0.14) == 0.0
    assert fscore(matching, 0.2) == 1.0


def test_fscore_threshold_is_strict_at_the_boundary():
    """precision(t) counts d < t: points exactly t away are not within t (exact binary
    distances: 0.5 and 0.25)."""
    generated = np.array([[0.0, 0.0, 0.0], [0.75, 0.0, 0.0]])
    reference = np.array([[0.5, 0.0, 0.0]])
    matching = Matching.of(generated, reference)
    assert matching.gen_distance.tolist() == [0.5, 0.25] and matching.ref_distance.tolist() == [0.25]
    assert precision_recall(matching, 0.5) == (0.5, 1.0)  # 0.5 is not < 0.5
    assert fscore(matching, 0.5) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert precision_recall(matching, np.nextafter(0.5, 1.0)) == (1.0, 1.0)
    assert precision_recall(matching, 0.25) == (0.0, 0.0) and fscore(matching, 0.25) == 0.0
    assert precision_recall(matching, np.nextafter(0.25, 1.0)) == (0.5, 1.0)


def test_shifted_sphere_has_the_analytic_chamfer():
    """Sphere of radius r vs the same sphere shifted by d (d <= r).

    A point at angle theta from the shift axis (u = cos theta, uniform on [-1, 1]) is at
    s(u) = sqrt(r^2 + d^2 - 2 r d u) from the shifted centre, so d(p, S') = |s(u) - r|. Averaging:
    E|s - r| = d / 2 (s = r at u = d / 2r; integrate s = (a - bu)^1/2 on each side), and
    E(s - r)^2 = 2r^2 + d^2 - 2r E[s] = d^2 / 3 with E[s] = r + d^2 / 3r. Both directions are
    equal by symmetry, so Chamfer-L1 = d / 2 and Chamfer-L2 = d^2 / 3, whatever r.
    """
    d = 0.2
    sphere, _ = _sphere_points(20_000, 0.5, seed=3)
    shifted, _ = _sphere_points(20_000, 0.5, center=(d, 0, 0), seed=4)
    matching = Matching.of(sphere, shifted)
    assert chamfer_l1(matching) == pytest.approx(d / 2, rel=2e-2)
    assert chamfer_l2(matching) == pytest.approx(d**2 / 3, rel=2e-2)


def test_normal_consistency_is_the_absolute_cosine():
    points = np.random.default_rng(0).uniform(-1, 1, size=(500, 3))
    up = np.tile([0.0, 0.0, 1.0], (500, 1))
    matching = Matching.of(points, points)
    assert normal_consistency(matching, up, -up) == pytest.approx(1.0)  # flipped: same surface
    assert normal_consistency(matching, up, np.tile([1.0, 0, 0], (500, 1))) == pytest.approx(0.0)
    theta = 0.3
    tilted = np.tile([math.sin(theta), 0.0, math.cos(theta)], (500, 1))
    assert normal_consistency(matching, up, tilted) == pytest.approx(math.cos(theta))


def test_point_metrics_name_bad_input():
    with pytest.raises(ValueError, match="generated points: no points"):
        Matching.of(np.zeros((0, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"reference points: expected an \(N, 3\)"):
        Matching.of(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="threshold must be positive"):
        fscore(Matching.of(np.zeros((1, 3)), np.zeros((1, 3))), 0.0)


# ---------------------------------------------------------------- volume IoU


def test_volume_iou_of_offset_boxes_is_their_analytic_overlap():
    """Unit cubes offset by (0.5, 0.25, 0): overlap 0.5 * 0.75 = 0.375, union 2 - 0.375 = 1.625.

    Queries are the cell centres of a 40^3 grid on [-1, 1]^3 (cells of 0.05), so every box face
    lies on cell boundaries and the count is exact.
    """
    axis = np.linspace(-1, 1, 41)[:-1] + 0.025
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    moved = box.copy().apply_translation([0.5, 0.25, 0.0])
    iou = volume_iou(inside(box.vertices, box.faces, grid), inside(moved.vertices, moved.faces, grid))
    assert iou == pytest.approx(0.375 / 1.625, abs=1e-12)
    assert math.isnan(volume_iou(np.zeros(4, bool), np.zeros(4, bool)))


# ---------------------------------------------------------------- image-shape alignment


def test_a_mesh_aligns_perfectly_with_its_own_view():
    mesh = trimesh.creation.icosphere(3, radius=0.6)
    view = _view_of(mesh, orbit_camera(30.0, 20.0, 3.0, 40.0, 64, 48))
    assert image_shape_alignment(mesh.vertices, mesh.faces, view) == {
        "silhouette_iou": 1.0, "depth_l1": 0.0, "mask_coverage": 1.0,
    }


def _front_face_mask(camera, y_range, z_range, x_front):
    """Pixels whose centre ray meets the face x = x_front, y in y_range, z in z_range of a camera on
    +x looking at the origin (image right = +y, image down = -z): the analytic silhouette."""
    depth = camera.center[0] - x_front
    fx, cx, cy = camera.K[0, 0], camera.K[0, 2], camera.K[1, 2]
    y = (np.arange(camera.width) + 0.5 - cx) * depth / fx
    z = -(np.arange(camera.height) + 0.5 - cy) * depth / fx
    in_y = (y > y_range[0]) & (y < y_range[1])
    in_z = (z > z_range[0]) & (z < z_range[1])
    return in_z[:, None] & in_y[None, :]


def test_a_shifted_box_overlaps_its_view_by_the_analytic_pixel_share():
    """A box seen face-on from +x: its silhouette is the front face, a square of side L = 2a f / z.
    Shifting the box by s along y (the image's right axis) slides it by s f / z, so the pixel
    IoU is (2a - s) / (2a + s) and the coverage (2a - s) / 2a, whatever f and z (up to pixels)."""
    box = trimesh.creation.box(extents=(0.6, 0.8, 0.8))  # a = 0.4, front face at x = 0.3
    camera = orbit_camera(0.0, 0.0, 3.0, 40.0, 96, 96)
    assert np.allclose(camera.c2w[:3, 0], [0, 1, 0]) and np.allclose(camera.c2w[:3, 1], [0, 0, -1])
    view = _view_of(box, camera)
    assert (view.mask == _front_face_mask(camera, (-0.4, 0.4), (-0.4, 0.4), 0.3)).all()
    moved = box.copy().apply_translation([0.0, 0.2, 0.0])
    result = image_shape_alignment(moved.vertices, moved.faces, view)
    analytic = _front_face_mask(camera, (-0.2, 0.6), (-0.4, 0.4), 0.3)
    pixel_iou = (analytic & view.mask).sum() / (analytic | view.mask).sum()
    assert result["silhouette_iou"] == pytest.approx(pixel_iou, abs=1e-12)
    assert result["silhouette_iou"] == pytest.approx(0.6 / 1.0, abs=0.02)
    assert result["mask_coverage"] == pytest.approx(0.6 / 0.8, abs=0.02)
    assert result["depth_l1"] == pytest.approx(0.0, abs=1e-5)  # both front faces at z = 2.7
    farther = box.copy().apply_translation([-0.1, 0.0, 0.0])
    assert image_shape_alignment(farther.vertices, farther.faces, view)["depth_l1"] == pytest.approx(
        0.1, abs=1e-5
    )


def test_empty_condition_masks_are_refused():
    camera = orbit_camera(0.0, 0.0, 3.0, 40.0, 8, 8)
    with pytest.raises(ValueError, match="mask is empty"):
        ConditionView(camera, np.zeros((8, 8), bool), np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="camera's image size"):
        ConditionView(camera, np.ones((8, 9), bool), np.zeros((8, 9), np.float32))


# ---------------------------------------------------------------- visible vs invisible


@pytest.fixture(scope="module")
def sphere_from_x():
    """A sphere of radius 0.5 seen from (3, 0, 0): the visible cap is x > r^2 / 3 = 1/12."""
    sphere = trimesh.creation.icosphere(4, radius=0.5)
    return _view_of(sphere, orbit_camera(0.0, 0.0, 3.0, 40.0, 64, 64))


def test_a_sphere_seen_from_plus_x_shows_its_plus_x_cap(sphere_from_x):
    points, _ = _sphere_points(20_000, 0.5)
    seen = seen_points(points, sphere_from_x)
    x = points[:, 0]
    assert not seen[x < 0].any()  # the far hemisphere is hidden
    assert seen[x > 0.2].mean() > 0.98  # the cap facing the camera (grazing rim excepted) is seen
    cap = (0.5 - 1 / 12) / 1.0  # area share of the geometric cap x > 1/12
    assert 0.8 * cap < seen.mean() <= cap


def test_the_seen_half_scores_perfectly_when_only_it_is_generated(sphere_from_x):
    reference, _ = _sphere_points(20_000, 0.5)
    seen = seen_points(reference, sphere_from_x)
    generated = reference[reference[:, 0] > 0]  # exactly the +x half, points shared
    result = split_fidelity(Matching.of(generated, reference), seen)
    assert result["visible/chamfer_l1"] == 0.0 and result["visible/fscore@0.01"] == 1.0
    _, recall = precision_recall(Matching.of(generated, reference).restrict(
        np.zeros(len(generated), bool), ~seen), 0.05)
    # unseen points within 0.05 of the +x half: those with x > -0.05 (half-sphere area 0.55 of 1)
    unseen_near = (reference[~seen, 0] > -0.05).mean()
    assert recall == pytest.approx(unseen_near, abs=0.02)
    assert result["invisible/fscore@0.05"] < 0.8


def test_stored_visible_points_count_as_seen(tiny_dataset):
    """The prepared dataset's visible points are first hits of the view: all of them are seen."""
    data = PreparedDataset(tiny_dataset)
    shape_id = data.ids()[0]
    arrays = data.view(shape_id, 0)
    view = ConditionView.from_arrays(arrays)
    assert seen_points(arrays["visible_points"], view).mean() > 0.99
    reference = Reference.from_dataset(data, shape_id)
    assert 0.05 < seen_points(reference.points, view).mean() < 0.95


# ---------------------------------------------------------------- evaluate_mesh


@pytest.fixture(scope="module")
def sphere_case(sphere_from_x):
    sphere = trimesh.creation.icosphere(4, radius=0.5)
    reference = Reference.from_mesh(sphere.vertices, sphere.faces, np.random.default_rng(0), 20_000, 4096)
    return sphere, reference, sphere_from_x


def test_evaluate_mesh_of_the_reference_itself(sphere_case):
    sphere, reference, view = sphere_case
    result = evaluate_mesh(sphere, reference, view, num_points=20_000)
    assert result["components"] == 1 and result["floater_area"] == 0 and result["empty"] == 0
    assert result["iou"] == 1.0 and result["silhouette_iou"] == 1.0 and result["depth_l1"] == 0.0
    # independent samplings of one surface: only the sampling floor (spacing ~0.012) remains
    assert result["chamfer_l1"] < 0.008 and result["fscore@0.05"] == 1.0
    assert result["normal_consistency"] > 0.99
    assert result["visible/fscore@0.05"] == 1.0 and result["invisible/fscore@0.05"] == 1.0
    assert all(isinstance(value, float) for value in result.values())


def test_an_empty_generation_scores_worst_with_the_same_keys(sphere_case):
    sphere, reference, view = sphere_case
    full = evaluate_mesh(sphere, reference, view, num_points=2000)
    empty = evaluate_mesh(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64)), reference, view)
    assert list(empty) == list(full)
    assert empty["empty"] == 1.0 and empty["components"] == 0
    assert empty["iou"] == 0.0 and empty["silhouette_iou"] == 0.0 and empty["fscore@0.01"] == 0.0
    assert math.isnan(empty["chamfer_l1"]) and math.isnan(empty["depth_l1"])
    assert empty["seen_fraction"] == full["seen_fraction"]


def test_reference_names_inconsistent_arrays():
    with pytest.raises(ValueError, match="normals"):
        Reference(np.zeros((4, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="uniform_labels"):
        Reference(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((5, 3)), np.zeros(4, bool))


# ---------------------------------------------------------------- statistics


def test_mean_ci_is_students_t():
    summary = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # s = sqrt(2.5), t_{0.975, 4} = 2.776445 (tables): half-width 2.776445 * sqrt(2.5 / 5)
    half = 2.776445 * math.sqrt(0.5)
    assert summary.mean == 3.0 and summary.n == 5 and summary.missing == 0
    assert summary.low == pytest.approx(3.0 - half, abs=1e-5)
    assert summary.high == pytest.approx(3.0 + half, abs=1e-5)
    constant = mean_ci([0.25] * 4)
    assert constant.low == constant.high == 0.25


def test_mean_ci_leaves_out_undefined_samples():
    summary = mean_ci([2.0, math.nan, 4.0])
    assert (summary.mean, summary.n, summary.missing) == (3.0, 2, 1)
    assert summary.high - summary.mean == pytest.approx(12.706205, abs=1e-5)  # t_{0.975, 1} * 1 / 1
    single = mean_ci([7.0])
    assert single.mean == 7.0 and math.isnan(single.low) and math.isnan(single.high)
    assert math.isnan(mean_ci([]).mean)
    with pytest.raises(ValueError, match="infinite"):
        mean_ci([1.0, math.inf])


def test_aggregate_summarises_each_metric():
    rows = [{"a": 1.0, "b": 0.0}, {"a": 3.0}, {"a": 5.0, "b": 1.0}]
    summary = aggregate(rows)
    assert list(summary) == ["a", "b"]
    assert summary["a"].mean == 3.0 and summary["a"].n == 3
    assert (summary["b"].mean, summary["b"].n, summary["b"].missing) == (0.5, 2, 1)
