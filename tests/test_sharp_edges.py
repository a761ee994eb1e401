"""Sharp-edge surface samples: on analytic shapes every sample lies on a true crease, and
``prepare`` stores them next to the uniform samples."""

import numpy as np
import pytest
import trimesh

from vilearn.data.sampling import sample_sharp_edges, sharp_edges


def on_box_edge(points: np.ndarray, half: float, tol: float = 1e-5) -> np.ndarray:
    """(K,) bool: the point has two coordinates at +-half and the third inside: one of 12 edges."""
    at_face = np.abs(np.abs(points) - half) < tol
    inside = np.abs(points) <= half + tol
    return (at_face.sum(axis=1) >= 2) & inside.all(axis=1)


def split_vertices(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """The same surface with no vertex shared between faces (how glTF stores flat shading)."""
    return mesh.vertices[mesh.faces].reshape(-1, 3), np.arange(3 * len(mesh.faces)).reshape(-1, 3)


@pytest.mark.parametrize("split", [False, True])
def test_every_cube_sample_lies_on_one_of_its_12_edges(split):
    box = trimesh.creation.box(extents=(1.2, 1.2, 1.2))
    vertices, faces = split_vertices(box) if split else (box.vertices, box.faces)
    points, normals = sample_sharp_edges(vertices, faces, 6000, 20.0, np.random.default_rng(0))
    assert points.shape == normals.shape == (6000, 3) and points.dtype == np.float32
    assert on_box_edge(points, 0.6).all()
    # all 12 edges are covered, each with about 1/12 of the samples (equal lengths)
    free_axis = np.abs(np.abs(points) - 0.6).argmax(axis=1)  # the coordinate along the edge
    saturated = np.arange(3) != free_axis[:, None]
    keys, counts = np.unique(np.where(saturated, np.sign(points), 0), axis=0, return_counts=True)
    assert len(keys) == 12 and np.all(np.abs(counts / 6000 - 1 / 12) < 0.02)
    # along each edge the position is uniform (the free coordinate's mean ~ 0, spread ~ 1.2^2/12)
    free = points[~saturated]
    assert abs(free.mean()) < 0.02 and abs(free.var() - 1.2**2 / 12) < 0.01
    # the normal bisects the two faces: (+-1, +-1, 0) / sqrt(2) on the saturated axes
    expected = np.where(saturated, np.sign(points), 0.0) / np.sqrt(2)
    assert np.allclose(normals, expected, atol=1e-6)


@pytest.mark.parametrize("sphere", [trimesh.creation.icosphere(subdivisions=3),
                                    trimesh.creation.uv_sphere(count=(48, 48))])
def test_a_sphere_has_no_sharp_samples(sphere):
    points, normals = sample_sharp_edges(sphere.vertices, sphere.faces, 1000, 20.0,
                                         np.random.default_rng(0))
    assert points.shape == normals.shape == (0, 3)


def test_the_threshold_selects_creases_by_dihedral_angle():
    """An octagonal prism: side creases turn by 45 degrees, the rims by 90."""
    prism = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=8)
    rng = np.random.default_rng(1)
    rims, _ = sample_sharp_edges(prism.vertices, prism.faces, 4000, 60.0, rng)
    assert np.allclose(np.abs(rims[:, 2]), 0.5, atol=1e-6)  # only the two rims (z = +-h/2)
    both, _ = sample_sharp_edges(prism.vertices, prism.faces, 4000, 30.0, rng)
    on_sides = np.abs(np.abs(both[:, 2]) - 0.5) > 1e-6
    # side creases are the 8 vertical edges at the octagon's corners (radius 0.5)
    assert on_sides.mean() > 0.2
    assert np.allclose(np.linalg.norm(both[on_sides, :2], axis=1), 0.5, atol=1e-6)
    ends, _, lengths = sharp_edges(prism.vertices, prism.faces, 30.0)
    # 8 side edges of length 1 plus 2 rims of 8 edges of length 2 * 0.5 * sin(pi / 8)
    assert np.isclose(lengths.sum(), 8 * 1.0 + 16 * np.sin(np.pi / 8))


def test_prepare_stores_sharp_samples_next_to_the_uniform_ones(tmp_path, tiny_prepare_config):
    import dataclasses

    from vilearn.data.dataset import PreparedDataset
    from vilearn.data.prepare import prepare_dataset

    (tmp_path / "meshes").mkdir()
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(tmp_path / "meshes" / "cube.obj")
    trimesh.creation.icosphere(subdivisions=3).export(tmp_path / "meshes" / "ball.obj")
    config = dataclasses.replace(tiny_prepare_config, sharp_points=700,
                                 views=dataclasses.replace(tiny_prepare_config.views, count=1))
    summary = prepare_dataset(tmp_path / "meshes", tmp_path / "out", config)
    assert summary.ok == 2
    data = PreparedDataset(tmp_path / "out")
    rows = {row["id"]: row for row in data.rows()}
    assert rows["cube"]["sharp_points"] == 700 and rows["ball"]["sharp_points"] == 0
    cube = data.surface("cube")
    assert cube["points"].shape == (config.surface_points, 3)
    assert cube["sharp_points"].shape == cube["sharp_normals"].shape == (700, 3)
    half = float(np.abs(data.mesh("cube")["vertices"]).max())  # the normalised cube's half side
    assert on_box_edge(cube["sharp_points"], half).all()
    assert not on_box_edge(cube["points"], half).all()  # the uniform samples are not on edges
    assert data.surface("ball")["sharp_points"].shape == (0, 3)


def test_bad_sharp_settings_name_the_key(tmp_path):
    from vilearn.config import ConfigError, load_config
    from vilearn.data.prepare import PrepareConfig

    with pytest.raises(ConfigError, match="sharp_angle_deg: 0.0 is out of range, must be in \\(0, 180\\)"):
        load_config(PrepareConfig, "prepare-tiny", ["sharp_angle_deg=0"])
    with pytest.raises(ConfigError, match="sharp_points: expected an integer"):
        load_config(PrepareConfig, "prepare-tiny", ["sharp_points=many"])
