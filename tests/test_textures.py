"""Textures, materials and vertex colours in the renders, against models written by the tests:
each rendered pixel must show the colour the file puts at that place of the surface."""

import numpy as np
import pytest
from PIL import Image

from vilearn.data.appearance import NEUTRAL_RGB, sample_texture
from vilearn.data.camera import Camera, intrinsics, look_at
from vilearn.data.mesh import load_mesh
from vilearn.data.render import Raycaster

# An 8x8 texture, one colour per quadrant as the image is seen (row 0 at the top).
QUADRANTS = {"top-left": (255, 0, 0), "top-right": (0, 255, 0),
             "bottom-left": (0, 0, 255), "bottom-right": (255, 255, 0)}
DIFFUSE = (0.5, 1.0, 0.8)


def _texture() -> np.ndarray:
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :4], image[:4, 4:] = QUADRANTS["top-left"], QUADRANTS["top-right"]
    image[4:, :4], image[4:, 4:] = QUADRANTS["bottom-left"], QUADRANTS["bottom-right"]
    return image


def _write_quad(folder, uv_scale=1.0, texture="checker.png", second_material=False):
    """The square [-1, 1]^2 at z = 0, uv = (x + 1) / 2 * uv_scale; optionally a second, flat
    red square beside it at x in [1.2, 2.2] with its own material."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_texture()).save(folder / "checker.png")
    kd = " ".join(str(c) for c in DIFFUSE)
    (folder / "quad.mtl").write_text(
        f"newmtl tex\nKd {kd}\nmap_Kd -s 1 1 1 {texture}\nnewmtl flat\nKd 1 0 0\n"
    )
    s = uv_scale
    lines = ["mtllib quad.mtl", "v -1 -1 0", "v 1 -1 0", "v 1 1 0", "v -1 1 0",
             "vt 0 0", f"vt {s} 0", f"vt {s} {s}", f"vt 0 {s}",
             "usemtl tex", "f 1/1 2/2 3/3", "f 1/1 3/3 4/4"]
    if second_material:
        lines += ["v 1.2 -0.5 0", "v 2.2 -0.5 0", "v 2.2 0.5 0", "v 1.2 0.5 0",
                  "usemtl flat", "f 5 6 7", "f 5 7 8"]
    (folder / "quad.obj").write_text("\n".join(lines) + "\n")
    return folder / "quad.obj"


def _front_camera(center=(0.0, 0.0), size=96) -> Camera:
    eye = np.array([center[0], center[1], 4.0])
    target = np.array([center[0], center[1], 0.0])
    return Camera(intrinsics(40.0, size, size), look_at(eye, target, np.array([0.0, 1.0, 0.0])), size, size)


def _pixel(rgb: np.ndarray, camera: Camera, point) -> np.ndarray:
    """The rendered colour at the pixel that ``point`` (3,) projects into."""
    uv, _ = camera.project(np.asarray([point], np.float64))
    x, y = np.floor(uv[0]).astype(int)
    return rgb[y, x].astype(float)


def _render(path):
    mesh = load_mesh(path)
    # ambient 1, diffuse 0: the pixel is the surface colour itself, without shading
    return mesh, lambda camera: Raycaster(mesh.vertices, mesh.faces, mesh.colors()).render(
        camera, ambient=1.0, diffuse=0.0).rgb


@pytest.mark.parametrize(("point", "quadrant"), [
    ((-0.5, -0.5, 0), "bottom-left"), ((0.5, -0.5, 0), "bottom-right"),
    ((-0.5, 0.5, 0), "top-left"), ((0.5, 0.5, 0), "top-right"),
])
def test_a_textured_quad_shows_each_quadrant_of_its_texture_times_diffuse(tmp_path, point, quadrant):
    mesh, render = _render(_write_quad(tmp_path))
    assert mesh.warnings == []
    camera = _front_camera()
    expected = np.asarray(QUADRANTS[quadrant]) * np.asarray(DIFFUSE)
    assert np.abs(_pixel(render(camera), camera, point) - expected).max() <= 1.0


def test_uvs_beyond_one_wrap_around_the_texture(tmp_path):
    # uv = (x + 1): the texture repeats twice across the square, so x = -0.75 (u = 0.25) and
    # x = 0.25 (u = 1.25) show the same texel, and y = 0.25 (v = 1.25) the bottom row again.
    _, render = _render(_write_quad(tmp_path, uv_scale=2.0))
    camera = _front_camera()
    rgb = render(camera)
    bottom_left = np.asarray(QUADRANTS["bottom-left"]) * np.asarray(DIFFUSE)
    for point in [(-0.75, -0.75, 0), (0.25, -0.75, 0), (-0.75, 0.25, 0), (0.25, 0.25, 0)]:
        assert np.abs(_pixel(rgb, camera, point) - bottom_left).max() <= 1.0


def test_each_part_keeps_its_own_material(tmp_path):
    _, render = _render(_write_quad(tmp_path, second_material=True))
    camera = _front_camera(center=(0.6, 0.0), size=128)
    rgb = render(camera)
    assert np.abs(_pixel(rgb, camera, (1.7, 0.0, 0)) - (255, 0, 0)).max() <= 1.0
    top_right = np.asarray(QUADRANTS["top-right"]) * np.asarray(DIFFUSE)
    assert np.abs(_pixel(rgb, camera, (0.5, 0.5, 0)) - top_right).max() <= 1.0


def test_a_missing_texture_gives_neutral_grey_and_a_warning(tmp_path):
    mesh, render = _render(_write_quad(tmp_path, texture="not-there.png"))
    assert any("not-there.png" in w and "not found" in w for w in mesh.warnings)
    camera = _front_camera()
    assert np.abs(_pixel(render(camera), camera, (0.5, 0.5, 0)) - NEUTRAL_RGB).max() <= 1.0


def test_a_missing_material_library_gives_neutral_grey_and_a_warning(tmp_path):
    path = _write_quad(tmp_path)
    (tmp_path / "quad.mtl").unlink()
    mesh, render = _render(path)
    assert any("quad.mtl" in w for w in mesh.warnings)
    camera = _front_camera()
    assert np.abs(_pixel(render(camera), camera, (-0.5, 0.5, 0)) - NEUTRAL_RGB).max() <= 1.0


def test_vertex_colours_are_interpolated_across_each_face(tmp_path):
    import trimesh

    quad = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]],
                           vertex_colors=[[0, 0, 0, 255], [200, 0, 0, 255], [200, 0, 0, 255], [0, 0, 0, 255]],
                           process=False)
    quad.export(tmp_path / "ramp.ply")
    _, render = _render(tmp_path / "ramp.ply")
    camera = _front_camera()
    rgb = render(camera)
    for x in (-0.5, 0.0, 0.5):  # red rises linearly from 0 at x = -1 to 200 at x = 1
        assert abs(_pixel(rgb, camera, (x, 0.1, 0))[0] - 100 * (x + 1)) <= 4.0


def test_bilinear_lookup_with_wrap_against_hand_values():
    texture = np.array([[[0, 0, 0], [100, 0, 0]], [[0, 100, 0], [100, 100, 0]]], np.uint8)  # 2x2
    # texel centres: u = 0.25 / 0.75, v = 0.75 (row 0) / 0.25 (row 1)
    uv = np.array([[0.25, 0.75], [0.75, 0.25], [0.5, 0.75], [0.0, 0.75], [1.0, 0.75], [0.5, 0.5]])
    expected = np.array([[0, 0, 0], [100, 100, 0], [50, 0, 0], [50, 0, 0], [50, 0, 0], [50, 50, 0]])
    assert np.allclose(sample_texture(texture, uv), expected)
