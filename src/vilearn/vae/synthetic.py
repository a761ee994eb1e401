"""Analytic shapes (unions of spheres and boxes) written in the prepared-dataset layout.

For tests, benchmarks and smoke runs that must not depend on the mesh pipeline. The files
follow the on-disk contract of ``vilearn.data`` (manifest.jsonl, shapes/<id>/surface.npz,
shapes/<id>/occupancy.npz); views are not written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vilearn.io import write_npz, write_text


@dataclass
class Primitive:
    kind: str  # "sphere" or "box"
    center: np.ndarray  # (3,)
    size: np.ndarray  # sphere: (1,) radius; box: (3,) half extents

    def signed(self, p: np.ndarray) -> np.ndarray:
        """Positive inside, (Q,) in distance units (exact for spheres, a bound for boxes)."""
        if self.kind == "sphere":
            return self.size[0] - np.linalg.norm(p - self.center, axis=1)
        return -(np.abs(p - self.center) - self.size).max(axis=1)

    def area(self) -> float:
        if self.kind == "sphere":
            return float(4 * np.pi * self.size[0] ** 2)
        a, b, c = 2 * self.size
        return float(2 * (a * b + b * c + a * c))

    def sample_surface(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "sphere":
            normals = rng.normal(size=(n, 3))
            normals /= np.linalg.norm(normals, axis=1, keepdims=True)
            return self.center + self.size[0] * normals, normals
        axis = rng.choice(3, size=n, p=self._face_weights())
        sign = rng.choice([-1.0, 1.0], size=n)
        local = rng.uniform(-1, 1, size=(n, 3)) * self.size
        local[np.arange(n), axis] = sign * self.size[axis]
        normals = np.zeros((n, 3))
        normals[np.arange(n), axis] = sign
        return self.center + local, normals

    def _face_weights(self) -> np.ndarray:
        a, b, c = self.size
        w = np.array([b * c, a * c, a * b])
        return w / w.sum()


def random_shape(rng: np.random.Generator) -> list[Primitive]:
    """One or two primitives inside [-0.9, 0.9]^3."""
    parts = []
    for _ in range(rng.integers(1, 3)):
        if rng.random() < 0.5:
            parts.append(Primitive("sphere", rng.uniform(-0.3, 0.3, 3), rng.uniform(0.25, 0.5, 1)))
        else:
            parts.append(Primitive("box", rng.uniform(-0.3, 0.3, 3), rng.uniform(0.1, 0.5, 3)))
    return parts


def inside(parts: list[Primitive], p: np.ndarray) -> np.ndarray:
    return np.max([part.signed(p) for part in parts], axis=0) > 0


def sample_surface(parts: list[Primitive], n: int, rng: np.random.Generator):
    """(n, 3) points and normals on the union's boundary (parts' surfaces outside the others)."""
    areas = np.array([p.area() for p in parts])
    points, normals = [], []
    while sum(len(p) for p in points) < n:
        counts = rng.multinomial(2 * n, areas / areas.sum())
        for i, (part, count) in enumerate(zip(parts, counts, strict=True)):
            pts, nrm = part.sample_surface(count, rng)
            others = [q for j, q in enumerate(parts) if j != i]
            keep = ~inside(others, pts) if others else np.ones(len(pts), bool)
            points.append(pts[keep])
            normals.append(nrm[keep])
    points, normals = np.concatenate(points), np.concatenate(normals)
    pick = rng.permutation(len(points))[:n]
    return points[pick].astype(np.float32), normals[pick].astype(np.float32)


def write_shape(root: Path, shape_id: str, parts: list[Primitive], rng: np.random.Generator,
                num_surface: int, num_uniform: int, num_near: int) -> None:
    folder = root / "shapes" / shape_id
    points, normals = sample_surface(parts, num_surface, rng)
    write_npz(folder / "surface.npz", points=points, normals=normals)
    uniform = rng.uniform(-1, 1, size=(num_uniform, 3)).astype(np.float32)
    base = points[rng.integers(0, num_surface, num_near)]
    near = (base + rng.normal(scale=0.02, size=base.shape)).astype(np.float32)
    write_npz(folder / "occupancy.npz", uniform_points=uniform,
              uniform_labels=inside(parts, uniform), near_points=near,
              near_labels=inside(parts, near))


def make_dataset(root: str | Path, num_shapes: int = 8, num_val: int = 2, seed: int = 0,
                 num_surface: int = 8192, num_uniform: int = 8192, num_near: int = 8192) -> Path:
    """Write ``num_shapes`` random shapes (the last ``num_val`` in split "val") under ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_shapes):
        shape_id = f"synthetic-{i:04d}"
        parts = random_shape(rng)
        write_shape(root, shape_id, parts, rng, num_surface, num_uniform, num_near)
        rows.append({"id": shape_id, "source": "synthetic", "status": "ok", "reason": "",
                     "split": "val" if i >= num_shapes - num_val else "train", "views": 0,
                     "primitives": [[p.kind, p.center.tolist(), p.size.tolist()] for p in parts]})
    write_text(root / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return root
