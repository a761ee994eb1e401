"""Ray-cast rendering with Embree (trimesh + embreex): condition image, mask, depth, normals
and the visible surface points of one view. Camera convention: ``vilearn.data.camera``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from vilearn.data.appearance import Appearance, barycentric
from vilearn.data.camera import Camera


@dataclass
class ViewRender:
    """What one camera sees.

    rgb (H, W, 3) uint8 on white; mask (H, W) bool; depth (H, W) float32 camera-frame z
    (0 = background); normal (H, W, 3) float32 unit outward face normals in the object
    frame (0 = background); points (P, 3) float32 first hits in the object frame, one per
    covered pixel, row-major; point_normals (P, 3) float32; pixels (P,) int64 flat pixel index.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    points: np.ndarray
    point_normals: np.ndarray
    pixels: np.ndarray


class Raycaster:
    """First-hit ray casting against one mesh with Embree; build once, cast many views.

    vertices (V, 3), faces (F, 3); ``colors``: an ``Appearance`` (materials, UV textures, vertex
    colours: evaluated at each hit), or (F, 3) uint8 flat face colours, or None for grey.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray,
                 colors: Appearance | np.ndarray | None = None):
        from embreex import rtcore_scene
        from embreex.mesh_construction import TriangleMesh

        self.vertices = np.asarray(vertices, np.float64)
        self.faces = np.asarray(faces, np.int64)
        self.mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        self.face_normals = np.asarray(self.mesh.face_normals, np.float64)
        if colors is None:
            colors = Appearance.flat(self.faces)
        elif not isinstance(colors, Appearance):
            colors = Appearance(self.faces, np.asarray(colors, np.uint8))
        self.appearance = colors
        # Embree (through embreex) finds the first triangle along each ray; the hit point is
        # then computed in float64 from that triangle's plane, so it lies exactly on the mesh.
        self.scene = rtcore_scene.EmbreeScene()
        TriangleMesh(self.scene, self.vertices.astype(np.float32), self.faces.astype(np.int32))

    def first_hits(self, origins: np.ndarray, directions: np.ndarray):
        """Rays (R, 3), unit directions -> (face index (H,), ray index (H,), hit location (H, 3))
        of the rays that hit, in ray order."""
        triangles = self.scene.run(origins.astype(np.float32), directions.astype(np.float32))
        rays = np.flatnonzero(triangles >= 0)
        faces = triangles[rays].astype(np.int64)
        normals = self.face_normals[faces]
        anchor = self.vertices[self.faces[faces, 0]]
        o, d = origins[rays], directions[rays]
        t = ((anchor - o) * normals).sum(axis=1) / (d * normals).sum(axis=1)
        return faces, rays, o + t[:, None] * d

    def render(self, camera: Camera, ambient: float = 0.35, diffuse: float = 0.65) -> ViewRender:
        """Render ``camera``'s view with a headlight (Lambertian + ambient) on a white background;
        the surface colour at each hit comes from the appearance (texture at the hit's UV)."""
        h, w = camera.height, camera.width
        origins, directions = camera.pixel_rays()
        faces, rays, hits = self.first_hits(origins, directions)
        normals = self.face_normals[faces]
        # Two-sided Lambert with the light at the eye: thin or inverted faces still shade.
        shade = ambient + diffuse * np.abs((normals * directions[rays]).sum(axis=1))
        rgb = np.full((h * w, 3), 255, np.uint8)
        weights = barycentric(hits, self.vertices[self.faces[faces]])
        base = self.appearance.color_at(faces, weights)
        rgb[rays] = np.clip(base * shade[:, None], 0, 255).astype(np.uint8)
        mask = np.zeros(h * w, bool)
        mask[rays] = True
        depth = np.zeros(h * w, np.float32)
        depth[rays] = camera.world_to_camera(hits)[:, 2]
        normal = np.zeros((h * w, 3), np.float32)
        normal[rays] = normals
        return ViewRender(
            rgb.reshape(h, w, 3),
            mask.reshape(h, w),
            depth.reshape(h, w),
            normal.reshape(h, w, 3),
            hits.astype(np.float32),
            normals.astype(np.float32),
            rays,
        )
