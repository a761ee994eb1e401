"""View-aligned datasets (docs/design.md, "Frames"): one shape per (shape, view), in that view's
frame.

``derive_view_frame(SRC, DST)`` turns a prepared object-frame dataset into another prepared
dataset whose shape ``<id>~<k>`` is shape ``<id>`` seen from its view ``k`` and expressed in the
frame of that camera: x to the right of the image, y down, z along the viewing direction, origin
at the object's centre. Each derived shape has exactly one view (its own). Everything
downstream (encode, group, train, evaluate) reads it as any prepared dataset, so latents, VST
and metrics all live in the view frame, as the design asks.

The transform of shape ``id``, view ``k`` with camera rotation ``R`` (c2w[:3, :3]) is
``x_view = s * R^T x_object``, with ``s = 1 / max |v|`` over the mesh's vertices: the object
frame fits a box ([-1, 1]^3), which a rotation can push out of the decoder's bounds; scaled to
the unit sphere, every rotation stays inside. In the view frame the camera has the identity
rotation and sits at ``s * R^T c`` (on the -z axis); intrinsics and images are unchanged, depth
maps scale by ``s``. Splits follow the source shape, so a held-out shape's views stay held out.

Resumable: a derived shape whose ``record.json`` exists is kept; the manifest is written last.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vilearn.data.layout import FORMAT_VERSION, DatasetLayout
from vilearn.data.prepare import read_manifest, write_manifest
from vilearn.io import (
    CorruptFileError,
    clean_stale_tmp,
    read_json,
    read_npz,
    write_bytes,
    write_json,
    write_npz,
)

SEPARATOR = "~"


def view_shape_id(shape_id: str, view: int) -> str:
    """The id of shape ``shape_id`` seen from its view ``view`` in a view-frame dataset."""
    return f"{shape_id}{SEPARATOR}{view}"


def unit_sphere_scale(vertices: np.ndarray) -> float:
    """s = 1 / the largest vertex norm of (V, 3) vertices: s * vertices fits the unit sphere."""
    radius = float(np.linalg.norm(vertices, axis=1).max())
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"cannot scale a mesh of radius {radius} to the unit sphere")
    return 1.0 / radius


def view_transform(c2w: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """The linear map x_view = A @ x_object of a view: A (3, 3) = scale * R^T, and the scale."""
    return scale * np.asarray(c2w, np.float64)[:3, :3].T, scale


def _points(a: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, np.float64) @ a.T).astype(np.float32)


def _directions(rotation: np.ndarray, normals: np.ndarray, dtype) -> np.ndarray:
    return (np.asarray(normals, np.float64) @ rotation.T).astype(dtype)


def view_arrays(view: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """A stored view's arrays (layout.py) re-expressed in its own view frame."""
    c2w = np.asarray(view["c2w"], np.float64)
    a, _ = view_transform(c2w, scale)
    rotation = c2w[:3, :3].T
    new_c2w = np.eye(4)
    new_c2w[:3, 3] = a @ c2w[:3, 3]
    normal = view["normal"]
    out = dict(view)
    out.update(
        c2w=new_c2w.astype(np.float32),
        depth=(view["depth"] * scale).astype(np.float32),
        normal=_directions(rotation, normal.reshape(-1, 3), normal.dtype).reshape(normal.shape),
        visible_points=_points(a, view["visible_points"]),
        visible_normals=_directions(rotation, view["visible_normals"], view["visible_normals"].dtype),
    )
    return out


def derive_shape(src: DatasetLayout, dst: DatasetLayout, row: dict) -> list[dict]:
    """Write every view of one ok source shape as a view-frame shape; returns their records."""
    shape_id = row["id"]
    mesh, surface, occupancy = (read_npz(src.mesh(shape_id)), read_npz(src.surface(shape_id)),
                                read_npz(src.occupancy(shape_id)))
    scale = unit_sphere_scale(mesh["vertices"])
    records = []
    for k in range(int(row["views"])):
        view = read_npz(src.view(shape_id, k))
        new_id = view_shape_id(shape_id, k)
        if dst.record(new_id).is_file():
            records.append(read_json(dst.record(new_id)))
            continue
        if dst.shape_dir(new_id).exists():  # half-written by an interrupted run
            shutil.rmtree(dst.shape_dir(new_id))
        a, _ = view_transform(view["c2w"], scale)
        rotation = np.asarray(view["c2w"], np.float64)[:3, :3].T
        write_npz(dst.mesh(new_id), compress=True, vertices=_points(a, mesh["vertices"]),
                  faces=mesh["faces"], face_colors=mesh["face_colors"])
        write_npz(dst.surface(new_id), points=_points(a, surface["points"]),
                  normals=_directions(rotation, surface["normals"], np.float32))
        write_npz(dst.occupancy(new_id), **{
            key: _points(a, value) if key.endswith("_points") else value
            for key, value in occupancy.items()})
        write_npz(dst.view(new_id, 0), compress=("mask", "depth", "normal"), **view_arrays(view, scale))
        write_bytes(dst.view_image(new_id, 0), src.view_image(shape_id, k).read_bytes())
        record = {**row, "id": new_id, "source_shape": shape_id, "source_view": k,
                  "frame_scale": scale, "views": 1,
                  "visible_counts": [int(row.get("visible_counts", [0] * (k + 1))[k])]}
        write_json(dst.record(new_id), record)
        records.append(record)
    return records


def derive_view_frame(src: str | Path, dst: str | Path,
                      on_shape: Callable[[str], None] | None = None) -> int:
    """Write the view-frame dataset of prepared dataset ``src`` into ``dst``; returns the number
    of derived (shape, view) entries. Failed source shapes are carried over as failed rows."""
    src_layout, dst_layout = DatasetLayout(src), DatasetLayout(dst)
    if not src_layout.manifest.is_file():
        raise FileNotFoundError(f"dataset {str(src)!r}: no manifest.jsonl (prepare it first)")
    source_config = read_json(src_layout.config)
    wanted = {"format_version": FORMAT_VERSION, "prepare": source_config["prepare"],
              "frame": "view", "source": str(Path(src).resolve())}
    if dst_layout.config.is_file() and read_json(dst_layout.config) != wanted:
        raise ValueError(f"{dst}: already holds a dataset derived from other settings or another "
                         "source (dataset.json); use another folder")
    write_json(dst_layout.config, wanted)
    clean_stale_tmp(dst_layout.root)
    rows = []
    for row in read_manifest(src_layout.manifest):
        if row.get("status") != "ok":
            rows.append(row)
        else:
            try:
                rows += derive_shape(src_layout, dst_layout, row)
            except (CorruptFileError, FileNotFoundError) as error:  # one bad file fails its shape
                rows.append({**row, "status": "failed", "reason": f"unreadable source file: {error}"})
        if on_shape:
            on_shape(row["id"])
    write_manifest(dst_layout.manifest, rows)
    return sum(row.get("status") == "ok" for row in rows)
