"""The one camera convention of ViLearn. Every module that projects, renders or un-projects uses it.

Convention (OpenCV / COLMAP):

* Camera axes: +x to the right of the image, +y down the image, +z forward (the viewing
  direction). A point is in front of the camera when its camera-frame z is positive.
* ``c2w`` (4, 4) float: camera-to-world (here: camera-to-object-frame) rigid transform;
  ``x_world = c2w[:3, :3] @ x_cam + c2w[:3, 3]``. Its columns are the camera's right, down and
  forward axes and its centre, in world coordinates.
* ``K`` (3, 3) float: pinhole intrinsics in pixels, ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
  Pixel (u, v) = (column, row); the centre of pixel (i, j) (row i, column j) is
  (u, v) = (j + 0.5, i + 0.5), so cx = width / 2 and cy = height / 2 for a centred camera.
* Depth maps store the camera-frame z of the first hit (not the ray length); 0 = no hit.
* Projection: ``[u, v, 1]^T ~ K @ x_cam``; ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.

Cameras for the condition views sit on a sphere around the object's centre (the origin of the
normalised frame), look at the origin, and keep the world +z axis up in the image (the world's
up axis is configurable; +z for URDF assets, +y is common for glTF).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``K`` (3, 3), ``c2w`` (4, 4), image ``width`` x ``height`` pixels."""

    K: np.ndarray
    c2w: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, (3,)."""
        return self.c2w[:3, 3]

    @property
    def forward(self) -> np.ndarray:
        """Unit viewing direction (camera +z) in world coordinates, (3,)."""
        return self.c2w[:3, 2]

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """points (P, 3) world -> (P, 3) camera frame."""
        rotation, center = self.c2w[:3, :3], self.c2w[:3, 3]
        return (points - center) @ rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """points (P, 3) world -> pixel coordinates uv (P, 2) and camera-frame depth z (P,)."""
        cam = self.world_to_camera(points)
        z = cam[:, 2]
        safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
        u = self.K[0, 0] * cam[:, 0] / safe + self.K[0, 2]
        v = self.K[1, 1] * cam[:, 1] / safe + self.K[1, 2]
        return np.stack([u, v], axis=1), z

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """One ray through the centre of every pixel, row-major.

        Returns:
            origins (H * W, 3) and unit directions (H * W, 3) in world coordinates; the ray
            of pixel (row i, column j) is at index ``i * width + j``.
        """
        key = (self.width, self.height, *self.K[:2].reshape(-1).tolist())
        cam, rotation = _camera_directions(key), self.c2w[:3, :3]
        # three column products: numpy's matmul with an inner size of 3 is several times slower
        directions = cam[:, :1] * rotation[:, 0] + cam[:, 1:2] * rotation[:, 1] + cam[:, 2:] * rotation[:, 2]
        origins = np.broadcast_to(self.center, directions.shape)
        return origins, directions

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "K": self.K.astype(np.float32),
            "c2w": self.c2w.astype(np.float32),
            "image_size": np.array([self.height, self.width], dtype=np.int32),
        }

    @classmethod
    def from_arrays(cls, arrays) -> Camera:
        height, width = (int(x) for x in arrays["image_size"])
        return cls(np.asarray(arrays["K"], np.float64), np.asarray(arrays["c2w"], np.float64), width, height)


@functools.lru_cache(maxsize=8)
def _camera_directions(key: tuple) -> np.ndarray:
    """Unit pixel-centre ray directions in the camera frame, (H * W, 3); cached per intrinsics."""
    width, height, fx, _, cx, _, fy, cy = key
    j, i = np.meshgrid(np.arange(width), np.arange(height))
    u, v = j.reshape(-1) + 0.5, i.reshape(-1) + 0.5
    directions = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=1)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions.setflags(write=False)
    return directions


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K (3, 3) for a centred pinhole camera whose horizontal field of view is ``fov_deg``."""
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """c2w (4, 4) of a camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image."""
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:  # looking straight along up: pick any perpendicular
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]) if abs(forward[0]) < 0.9 else [0, 1.0, 0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def orbit_camera(
    azimuth_deg: float,
    elevation_deg: float,
    distance: float,
    fov_deg: float,
    width: int,
    height: int,
    up_axis: str = "z",
) -> Camera:
    """A camera on a sphere of radius ``distance`` around the origin, looking at it.

    Azimuth is measured in the plane orthogonal to ``up_axis`` (0 deg on that plane's first
    axis: +x for up z or y, +y for up x), elevation upwards from that plane.
    """
    up = {"x": np.array([1.0, 0, 0]), "y": np.array([0, 1.0, 0]), "z": np.array([0, 0, 1.0])}[up_axis]
    first, second = {"z": (0, 1), "y": (2, 0), "x": (1, 2)}[up_axis]
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = np.zeros(3)
    eye[first] = math.cos(el) * math.cos(az)
    eye[second] = math.cos(el) * math.sin(az)
    eye += up * math.sin(el)
    eye *= distance
    return Camera(intrinsics(fov_deg, width, height), look_at(eye, np.zeros(3), up), width, height)


def fit_distance(fov_deg: float, radius: float = math.sqrt(3.0), fill: float = 1.0) -> float:
    """Distance at which a sphere of ``radius`` exactly fits the field of view (times 1 / fill)."""
    return radius / math.sin(math.radians(fov_deg) / 2) / fill
