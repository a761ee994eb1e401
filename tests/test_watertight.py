"""Watertight offset surfaces against the analytic inside of the shapes they come from.

The inside of the offset surface of an open surface S at distance r is {x : dist(x, S) < r}; the
distances below are computed in closed form (to axis-aligned rectangles), not with the mesh code.
"""

import json

import numpy as np
import pytest
import trimesh

from vilearn.data.inside import inside
from vilearn.data.watertight import WatertightConfig, watertight_mesh

CONFIG = WatertightConfig(resolution=64, offset_voxels=3.0)
BAND = 2.0 / CONFIG.resolution  # points within a grid cell of the offset surface are not judged


def _rectangle_distance(points, center, half, normal_axis):
    """Distance from points (P, 3) to the axis-aligned rectangle |x_i - c_i| <= half_i (i in the
    plane), x_normal = c_normal."""
    delta = np.abs(points - center)
    excess = np.maximum(delta - half, 0.0)
    excess[:, normal_axis] = delta[:, normal_axis]
    return np.linalg.norm(excess, axis=1)


def _open_box(h=0.6):
    """The cube |x| <= h without its top face (5 squares), as a mesh and as rectangles."""
    box = trimesh.creation.box(extents=(2 * h,) * 3)
    mesh = trimesh.Trimesh(box.vertices, box.faces[box.face_normals[:, 2] < 0.9], process=False)
    rects = []
    for axis in range(3):
        for sign in (-1, 1):
            if axis == 2 and sign == 1:
                continue
            center = np.zeros(3)
            center[axis] = sign * h
            half = np.full(3, h)
            rects.append((center, half, axis))
    return mesh, rects


def _sheet(h=0.8):
    mesh = trimesh.Trimesh([[-h, -h, 0], [h, -h, 0], [h, h, 0], [-h, h, 0]], [[0, 1, 2], [0, 2, 3]],
                           process=False)
    return mesh, [(np.zeros(3), np.full(3, h), 2)]


@pytest.mark.parametrize("shape", [_open_box, _sheet], ids=["open box", "single-sided sheet"])
def test_the_offset_surface_encloses_exactly_the_points_near_the_open_surface(shape):
    mesh, rects = shape()
    rng = np.random.default_rng(0)
    vertices, faces = watertight_mesh(mesh.vertices, mesh.faces, CONFIG, rng)
    closed = trimesh.Trimesh(vertices, faces, process=False)
    assert closed.is_watertight and closed.volume > 0  # closed and outward
    points = np.concatenate([rng.uniform(-1, 1, (20000, 3)),
                             mesh.sample(20000) + rng.normal(0, 0.03, (20000, 3))])
    distance = np.min([_rectangle_distance(points, *r) for r in rects], axis=0)
    truth = distance < CONFIG.offset
    judged = np.abs(distance - CONFIG.offset) > BAND
    labels = inside(vertices, faces, points)
    assert truth[judged].sum() > 1000  # the test looks at many inside points
    assert (labels[judged] == truth[judged]).mean() > 0.999


def test_a_closed_box_with_a_narrow_slit_is_filled():
    # a hole narrower than twice the offset closes: the whole box is inside, not just its walls
    h, slit = 0.6, 0.01
    box = trimesh.creation.box(extents=(2 * h,) * 3)
    top = box.face_normals[:, 2] > 0.9
    lid = trimesh.Trimesh([[-h, -h, h], [h, -h, h], [h, -slit, h], [-h, -slit, h],
                           [-h, slit, h], [h, slit, h], [h, h, h], [-h, h, h]],
                          [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]], process=False)
    walls = trimesh.Trimesh(box.vertices, box.faces[~top], process=False)
    mesh = trimesh.util.concatenate([walls, lid])
    vertices, faces = watertight_mesh(mesh.vertices, mesh.faces, CONFIG, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 1, (20000, 3))
    truth = (np.abs(points) < h).all(axis=1)  # the solid box (the offset shell adds a thin skin)
    judged = np.abs(np.abs(points).max(axis=1) - h) > CONFIG.offset + BAND
    labels = inside(vertices, faces, points)
    assert (labels[judged] == truth[judged]).mean() > 0.999


def _write_towel(folder):
    """A single-sided wavy sheet (a towel, a curtain): not flat, but no inside anywhere."""
    folder.mkdir()
    x, y = np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21), indexing="ij")
    vertices = np.stack([x, y, 0.15 * np.sin(2 * x)], axis=-1).reshape(-1, 3)
    index = np.arange(21 * 21).reshape(21, 21)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    trimesh.Trimesh(vertices, faces, process=False).export(folder / "towel.obj")
    return folder


@pytest.mark.parametrize(("mode", "why"), [("auto", "open surface"), ("always", "always"), ("never", None)])
def test_prepare_remeshes_open_sheets_whose_inside_is_unreliable(tmp_path, tiny_prepare_config, mode, why):
    import dataclasses

    from vilearn.data.prepare import prepare_dataset

    config = dataclasses.replace(tiny_prepare_config, watertight=WatertightConfig(mode=mode, resolution=64))
    out = tmp_path / "data"
    prepare_dataset(_write_towel(tmp_path / "src"), out, config)
    record = json.loads((out / "shapes" / "towel" / "record.json").read_text())
    assert record["status"] == "ok", record["reason"]
    if why is None:  # kept as it is: the winding numbers' guess
        assert record["watertight"] is None
        return
    assert record["watertight"]["why"].startswith(why)
    mesh = np.load(out / "shapes" / "towel" / "mesh.npz")
    assert trimesh.Trimesh(mesh["vertices"], mesh["faces"], process=False).is_watertight
    # the stored supervision is the slab around the sheet: points within the offset of it
    occupancy = np.load(out / "shapes" / "towel" / "occupancy.npz")
    points, labels = occupancy["uniform_points"], occupancy["uniform_labels"]
    x, y, z = points.T / 0.95  # the normalisation scales the towel's extent 2 to 1.9
    slab = (np.abs(z - 0.15 * np.sin(2 * x)) * 0.95 < 0.5 * config.watertight.offset) & (np.abs(x) < 0.95) \
        & (np.abs(y) < 0.95)
    away = np.abs(z - 0.15 * np.sin(2 * x)) * 0.95 > 2 * config.watertight.offset
    assert labels[slab].mean() > 0.95 and labels[away].mean() < 0.01
