"""Occupancy labels against analytic inside tests."""

import numpy as np
import trimesh

from vilearn.data.inside import inside


def _grid_points(rng, count=4000, bound=1.0):
    return rng.uniform(-bound, bound, size=(count, 3))


def _away_from(points, distance_to_surface, eps):
    return np.abs(distance_to_surface(points)) > eps


def test_sphere_matches_analytic():
    rng = np.random.default_rng(0)
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.7)
    points = _grid_points(rng)
    radius = np.linalg.norm(points, axis=1)
    keep = np.abs(radius - 0.7) > 0.01  # the mesh is a polyhedron: skip the faceting band
    labels = inside(sphere.vertices, sphere.faces, points[keep])
    assert np.array_equal(labels, radius[keep] < 0.7)


def test_box_matches_analytic():
    rng = np.random.default_rng(1)
    box = trimesh.creation.box(extents=(1.2, 0.6, 1.0))
    points = _grid_points(rng)
    half = np.array([0.6, 0.3, 0.5])
    truth = (np.abs(points) < half).all(axis=1)
    labels = inside(box.vertices, box.faces, points)
    assert np.array_equal(labels, truth)


def test_two_part_mesh_matches_union():
    rng = np.random.default_rng(2)
    a = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    a.apply_translation((-0.5, 0, 0))
    b = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    b.apply_translation((0.5, 0.2, 0))
    both = trimesh.util.concatenate([a, b])
    points = _grid_points(rng)
    in_a = (np.abs(points - (-0.5, 0, 0)) < 0.25).all(axis=1)
    r_b = np.linalg.norm(points - (0.5, 0.2, 0), axis=1)
    keep = np.abs(r_b - 0.3) > 0.01
    labels = inside(both.vertices, both.faces, points[keep])
    assert np.array_equal(labels, (in_a | (r_b < 0.3))[keep])


def test_open_box_still_right_away_from_the_hole():
    """A box with its +z face removed: winding numbers still separate inside from outside."""
    rng = np.random.default_rng(3)
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    top = box.face_normals[:, 2] > 0.9
    assert top.sum() == 2
    vertices, faces = box.vertices, box.faces[~top]
    assert not trimesh.Trimesh(vertices, faces).is_watertight
    points = _grid_points(rng, bound=0.9)
    # Points right at the missing lid are genuinely ambiguous; everything else has an answer.
    keep = (points[:, 2] < 0.35) | (np.abs(points[:, 2] - 0.5) > 0.3)
    truth = (np.abs(points) < 0.5).all(axis=1)
    labels = inside(vertices, faces, points[keep])
    assert np.array_equal(labels, truth[keep])


def test_inverted_orientation_is_still_inside():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    flipped = box.faces[:, ::-1]
    labels = inside(box.vertices, flipped, np.array([[0.0, 0, 0], [0.9, 0, 0]]))
    assert labels.tolist() == [True, False]
