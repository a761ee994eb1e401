"""Views against analytic geometry: visible points on the surface, first along their ray,
facing the camera, and inside the mask through the stored camera."""

import numpy as np
import pytest
import trimesh

from vilearn.data.camera import Camera, orbit_camera
from vilearn.data.dataset import PreparedDataset
from vilearn.data.render import Raycaster

HALF = np.array([0.6, 0.4, 0.3])


def _slab_entry(origins, directions):
    """Distance along each ray to the first hit of the box |x| <= HALF (analytic slab method)."""
    with np.errstate(divide="ignore"):
        t1 = (-HALF - origins) / directions
        t2 = (HALF - origins) / directions
    near = np.minimum(t1, t2).max(axis=1)
    far = np.maximum(t1, t2).min(axis=1)
    return np.where(near <= far, near, np.inf)


@pytest.fixture(scope="module")
def box_view():
    box = trimesh.creation.box(extents=2 * HALF)
    camera = orbit_camera(35.0, 25.0, 3.0, 40.0, 96, 80)
    return camera, Raycaster(box.vertices, box.faces).render(camera)


def test_visible_points_lie_on_the_box_surface(box_view):
    _, view = box_view
    on_face = np.abs(np.abs(view.points) - HALF).min(axis=1)
    assert len(view.points) > 500
    assert on_face.max() < 1e-5
    assert (np.abs(view.points) <= HALF + 1e-5).all()


def test_visible_points_are_first_hits(box_view):
    camera, view = box_view
    origins, directions = camera.pixel_rays()
    t = _slab_entry(origins, directions)
    hit = np.isfinite(t) & (t > 0)
    # pixels whose ray grazes an edge are ambiguous; every other pixel must agree exactly
    assert (hit == view.mask.reshape(-1)).mean() > 0.99
    analytic = origins[view.pixels] + t[view.pixels, None] * directions[view.pixels]
    assert np.abs(analytic - view.points).max() < 1e-4


def test_visible_points_face_the_camera(box_view):
    camera, view = box_view
    to_camera = camera.center - view.points
    assert ((view.point_normals * to_camera).sum(axis=1) > 0).all()


def test_depth_is_camera_z(box_view):
    camera, view = box_view
    z = camera.world_to_camera(view.points)[:, 2]
    assert np.allclose(view.depth.reshape(-1)[view.pixels], z, atol=1e-5)
    assert (view.depth[~view.mask] == 0).all()


def test_camera_projects_pixel_centres_back():
    camera = orbit_camera(120.0, -10.0, 2.5, 50.0, 40, 30, up_axis="y")
    origins, directions = camera.pixel_rays()
    points = origins + 1.7 * directions
    uv, z = camera.project(points)
    rows, cols = np.divmod(np.arange(40 * 30), 40)
    assert np.allclose(uv, np.stack([cols + 0.5, rows + 0.5], axis=1), atol=1e-6)
    assert (z > 0).all()


@pytest.mark.parametrize("width, height", [(64, 64), (41, 30)])
def test_intrinsics_follow_the_documented_convention(width, height):
    """Principal point at (W/2, H/2) exactly (pixel centres at +0.5), square pixels, focal length
    from the horizontal field of view: fx = (W / 2) / tan(fov / 2)."""
    import math

    camera = orbit_camera(30.0, 10.0, 2.0, 50.0, width, height)
    assert (camera.K[0, 2], camera.K[1, 2]) == (width / 2, height / 2)
    focal = (width / 2) / math.tan(math.radians(25.0))
    assert camera.K[0, 0] == camera.K[1, 1] == pytest.approx(focal, rel=1e-12)
    assert (camera.K[0, 1], camera.K[1, 0], camera.K[2].tolist()) == (0.0, 0.0, [0.0, 0.0, 1.0])
    uv, z = camera.project((camera.center + 0.7 * camera.forward)[None])  # the optical axis
    assert np.abs(uv - [[width / 2, height / 2]]).max() < 1e-12 and z[0] == pytest.approx(0.7)
    # the ray through pixel (row 0, column 0) passes through its centre (0.5, 0.5)
    _, directions = camera.pixel_rays()
    cam = directions[0] @ camera.c2w[:3, :3]
    assert cam[0] / cam[2] * camera.K[0, 0] == pytest.approx(0.5 - width / 2, abs=1e-9)
    assert cam[1] / cam[2] * camera.K[1, 1] == pytest.approx(0.5 - height / 2, abs=1e-9)


def test_stored_views_keep_the_principal_point_at_the_centre(tiny_dataset):
    data = PreparedDataset(tiny_dataset)
    for row in data.rows():
        for k in range(row["views"]):
            view = data.view(row["id"], k, ("K", "image_size"))
            height, width = view["image_size"].tolist()
            assert view["K"][0, 2] == width / 2 and view["K"][1, 2] == height / 2


def test_orbit_camera_keeps_up_axis_up():
    camera = orbit_camera(0.0, 0.0, 3.0, 40.0, 64, 64, up_axis="z")
    uv, _ = camera.project(np.array([[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]]))
    assert uv[0, 1] < 32 < uv[1, 1]  # +z appears above the centre (smaller row)
    assert np.allclose(camera.center, [3.0, 0.0, 0.0])


def test_stored_visible_points_project_inside_the_stored_mask(tiny_dataset):
    data = PreparedDataset(tiny_dataset)
    checked = 0
    for shape_id in data.ids():
        for view_index in range(2):
            arrays = data.view(shape_id, view_index)
            camera = Camera.from_arrays(arrays)
            uv, z = camera.project(arrays["visible_points"].astype(np.float64))
            cols, rows = np.floor(uv).astype(int).T
            assert (z > 0).all()
            assert ((rows >= 0) & (rows < camera.height) & (cols >= 0) & (cols < camera.width)).all()
            assert arrays["mask"][rows, cols].all()
            # and the stored depth at that pixel is the point's own depth (no point is hidden)
            assert np.allclose(arrays["depth"][rows, cols], z, atol=1e-4)
            assert arrays["visible_count"] >= len(arrays["visible_points"])
            checked += 1
    assert checked == 12
