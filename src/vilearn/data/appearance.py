"""Surface colour: materials, UV textures and vertex colours, evaluated where rays hit.

A mesh's colour at a point on face ``f`` with barycentric coordinates ``(w0, w1, w2)`` is, in
order of precedence:

1. ``face_colors[f]`` when the mesh has flat face colours (e.g. a URDF's single colour);
2. its material's diffuse colour, times the texture sampled at the interpolated UV
   (``uv = w0 uv[a] + w1 uv[b] + w2 uv[c]``; bilinear, wrapping at the edges as OBJ/glTF
   repeat textures) when the material has one;
3. the vertex colours interpolated barycentrically;
4. a neutral grey.

UV convention (OBJ, glTF after trimesh's import): u to the right, v up, (0, 0) the bottom-left
corner of the image; pixel centres at ((i + 0.5) / W, 1 - (j + 0.5) / H).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEUTRAL_RGB = (178, 178, 178)


@dataclass
class Material:
    """diffuse (3,) float in [0, 1]; texture (H, W, 3) uint8 or None; ``name`` as in the file."""

    diffuse: np.ndarray
    texture: np.ndarray | None = None
    name: str = ""


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup with wrap-around. texture (H, W, 3) uint8, uv (P, 2) -> (P, 3) float in [0, 255]."""
    height, width = texture.shape[:2]
    x = np.mod(uv[:, 0], 1.0) * width - 0.5
    y = np.mod(1.0 - uv[:, 1], 1.0) * height - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0 = x0.astype(np.int64) % width
    y0 = y0.astype(np.int64) % height
    x1, y1 = (x0 + 1) % width, (y0 + 1) % height
    image = texture.astype(np.float64)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def barycentric(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """points (P, 3) on triangles (P, 3, 3) -> barycentric weights (P, 3) summing to 1."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    denom = d00 * d11 - d01 * d01
    denom = np.where(np.abs(denom) < 1e-30, 1.0, denom)  # degenerate triangle: weight on a
    w1 = (d11 * d20 - d01 * d21) / denom
    w2 = (d00 * d21 - d01 * d20) / denom
    return np.stack([1.0 - w1 - w2, w1, w2], axis=1)


@dataclass
class Appearance:
    """How a mesh's surface is coloured, face by face.

    faces (F, 3) int64 index the mesh's vertices. Every face has a flat colour in
    ``face_colors`` (F, 3) uint8 (neutral grey where nothing else is known); faces flagged in
    ``vertex_colored`` (F,) bool interpolate ``vertex_colors`` (V, 3) uint8 instead; faces with
    ``face_material`` (F,) int64 >= 0 take that entry of ``materials`` (its diffuse colour, times
    its texture at ``uv`` (V, 2) when it has one), which wins over both.
    """

    faces: np.ndarray
    face_colors: np.ndarray
    vertex_colors: np.ndarray | None = None
    vertex_colored: np.ndarray | None = None
    uv: np.ndarray | None = None
    face_material: np.ndarray | None = None
    materials: tuple[Material, ...] = ()

    @classmethod
    def flat(cls, faces: np.ndarray, rgb=NEUTRAL_RGB) -> Appearance:
        """One colour on every face."""
        return cls(faces, np.tile(np.asarray(rgb, np.uint8), (len(faces), 1)))

    def color_at(self, faces: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Points on ``faces`` (H,) with barycentric ``weights`` (H, 3) -> (H, 3) float RGB in [0, 255]."""
        out = self.face_colors[faces].astype(np.float64)
        corners = self.faces[faces]  # (H, 3)
        if self.vertex_colors is not None and self.vertex_colored is not None:
            hit = np.flatnonzero(self.vertex_colored[faces])
            colors = self.vertex_colors[corners[hit]].astype(np.float64)  # (h, 3 corners, 3)
            out[hit] = (colors * weights[hit, :, None]).sum(axis=1)
        if self.face_material is None:
            return out
        material_of_hit = self.face_material[faces]
        for index, material in enumerate(self.materials):
            hit = np.flatnonzero(material_of_hit == index)
            if len(hit) == 0:
                continue
            color = np.full((len(hit), 3), 255.0)
            if material.texture is not None and self.uv is not None:
                uv = (self.uv[corners[hit]] * weights[hit, :, None]).sum(axis=1)
                color = sample_texture(material.texture, uv)
            out[hit] = color * material.diffuse
        return out

    def face_rgb(self) -> np.ndarray:
        """(F, 3) uint8: one colour per face, the colour at its centroid (for previews and the
        stored mesh)."""
        count = len(self.faces)
        centroid = np.full((count, 3), 1.0 / 3.0)
        return np.clip(np.rint(self.color_at(np.arange(count), centroid)), 0, 255).astype(np.uint8)

    def renumbered(self, used: np.ndarray, faces: np.ndarray) -> Appearance:
        """The same appearance on a copy of the mesh whose vertices were renumbered: ``used`` (V',)
        old vertex ids in their new order, ``faces`` (F, 3) the same faces in new numbers."""
        return Appearance(
            faces,
            self.face_colors,
            None if self.vertex_colors is None else self.vertex_colors[used],
            self.vertex_colored,
            None if self.uv is None else self.uv[used],
            self.face_material,
            self.materials,
        )
