"""``vilearn prepare``: meshes -> the prepared dataset (layout in ``vilearn.data.layout``).

Each shape is one job: load, validate, normalise, sample the surface, label occupancy
points by winding number, render its views. Jobs run in parallel worker processes; each job
writes its files atomically and its ``record.json`` last, so a shape is either done or
redone from scratch. Every random choice comes from a generator seeded by (seed, shape id),
so the result does not depend on the number of workers, the order, or interruptions.

A job that runs past ``time_limit_s`` (a pathological mesh, a stalled file system) is stopped
with its worker process, recorded as failed ("time limit: ...") and the run goes on; so is a
worker that dies (a crash in native code). With ``shard`` (``vilearn.data.shards``) a run does
only its shard's shapes and writes its rows to its own manifest part.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from vilearn.config import AtLeastOne, ConfigError, Fraction, NonNegative, Positive, Range, from_dict, to_dict
from vilearn.data.appearance import Appearance, barycentric
from vilearn.data.camera import Camera, fit_distance, orbit_camera
from vilearn.data.inside import winding_numbers
from vilearn.data.layout import FORMAT_VERSION, DatasetLayout, read_manifest
from vilearn.data.mesh import (
    MESH_SUFFIXES,
    Mesh,
    MeshError,
    Source,
    iter_sources,
    load_source,
    normalize,
    validate,
)
from vilearn.data.render import Raycaster
from vilearn.data.sampling import occupancy_samples, sample_sharp_edges, sample_surface
from vilearn.data.shards import Shard, manifest_part
from vilearn.data.watertight import WatertightConfig, watertight_mesh
from vilearn.io import clean_stale_tmp, read_json, write_json, write_npz, write_png, write_text


@dataclass
class ViewConfig:
    """Condition views: cameras on a sphere around the object, looking at its centre."""

    count: Annotated[int, NonNegative] = 8
    image_size: Annotated[int, Range(8)] = 384
    fov_deg: Annotated[float, Range(1, 150)] = 40.0
    elevation_deg: tuple[float, float] = (-10.0, 40.0)
    distance: Annotated[float, Positive] | None = None  # None: fit the bounding sphere into the view
    up_axis: str = "z"
    visible_points: Annotated[int, AtLeastOne] = 20000
    ambient: Annotated[float, Fraction] = 0.35
    diffuse: Annotated[float, Fraction] = 0.65

    def __post_init__(self):
        if self.count < 0 or self.image_size < 8 or self.visible_points < 1:
            raise ValueError("count >= 0, image_size >= 8 and visible_points >= 1 are required")
        if not 1.0 <= self.fov_deg <= 150.0:
            raise ValueError(f"fov_deg must be in [1, 150], got {self.fov_deg}")
        if self.up_axis not in ("x", "y", "z"):
            raise ValueError(f"up_axis must be x, y or z, got {self.up_axis!r}")
        low, high = self.elevation_deg
        if not -90 <= low <= high <= 90:
            raise ValueError(f"elevation_deg must be an increasing range in [-90, 90], got {low, high}")


@dataclass
class PrepareConfig:
    """Everything that decides what ``prepare`` writes (it is stored in dataset.json)."""

    # 20 per token at 4096 tokens (Hunyuan3D-2.1's VAE input)
    surface_points: Annotated[int, AtLeastOne] = 81920
    # Points on sharp edges (dihedral angle above sharp_angle_deg), stored next to the uniform
    # ones: the sharp half of a Hunyuan3D-2.0 VAE's input at 4096 tokens (20 x 4096 / 2).
    sharp_points: Annotated[int, NonNegative] = 40960
    sharp_angle_deg: Annotated[float, Range(0, 180, low_open=True, high_open=True)] = 20.0
    uniform_points: Annotated[int, AtLeastOne] = 25000
    near_points: Annotated[int, AtLeastOne] = 25000
    near_sigmas: tuple[Annotated[float, Positive], Annotated[float, Positive]] = (0.005, 0.025)
    margin: Annotated[float, Range(0, 0.5, high_open=True)] = 0.05
    max_faces: Annotated[int, AtLeastOne] = 500_000
    min_thickness: Annotated[float, Range(0, 1)] = 1e-3
    val_fraction: Annotated[float, Range(0, 1, high_open=True)] = 0.05
    seed: Annotated[int, NonNegative] = 0
    views: ViewConfig = field(default_factory=ViewConfig)
    watertight: WatertightConfig = field(default_factory=WatertightConfig)
    # Seconds one shape may take before its job is stopped and recorded as failed (0: no limit).
    # Not part of the dataset's identity (dataset.json): it changes no file a shape writes.
    time_limit_s: float = 600.0

    def __post_init__(self):
        if min(self.surface_points, self.uniform_points, self.near_points) < 1:
            raise ValueError("surface_points, uniform_points and near_points must be positive")
        if self.sharp_points < 0 or not 0 < self.sharp_angle_deg < 180:
            raise ValueError(f"sharp_points must be >= 0 and sharp_angle_deg in (0, 180), got "
                             f"{self.sharp_points} and {self.sharp_angle_deg}")
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.time_limit_s < 0:
            raise ValueError(f"time_limit_s must be >= 0 (0: no limit), got {self.time_limit_s}")


AMBIGUITY_POINTS = 2000  # near-surface points whose winding numbers judge whether a mesh is closed


def shape_rng(seed: int, shape_id: str, stream: str) -> np.random.Generator:
    """A generator that depends only on (seed, shape id, stream name)."""
    digest = hashlib.sha256(f"{seed}/{shape_id}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def split_of(shape_id: str, val_fraction: float) -> str:
    """'val' for a stable pseudo-random ``val_fraction`` of ids, else 'train'."""
    digest = hashlib.sha256(f"split/{shape_id}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "little") / 2**64 < val_fraction else "train"


def view_cameras(config: ViewConfig, radius: float, rng: np.random.Generator) -> list[Camera]:
    """``config.count`` cameras: uniform azimuth, elevation uniform in the configured range."""
    distance = config.distance or fit_distance(config.fov_deg, radius, fill=0.9)
    cameras = []
    for _ in range(config.count):
        azimuth = rng.uniform(0.0, 360.0)
        elevation = rng.uniform(*config.elevation_deg)
        cameras.append(
            orbit_camera(
                azimuth, elevation, distance, config.fov_deg,
                config.image_size, config.image_size, config.up_axis,
            )
        )
    return cameras


@dataclass
class JobResult:
    """One shape's manifest row and where its time went (seconds per stage)."""

    record: dict
    timings: dict[str, float]
    skipped: bool = False


def _base_record(source: Source, config: PrepareConfig) -> dict:
    return {
        "id": source.id,
        "source": source.location,
        "split": split_of(source.id, config.val_fraction),
        **({"meta": source.meta} if source.meta else {}),
    }


def process_shape(source: Source, layout: DatasetLayout, config: PrepareConfig) -> JobResult:
    """Prepare one shape; failures become a 'failed' record with the reason, never an exception.

    The geometry that surface samples, occupancy and the stored mesh come from is the asset's
    own, or its watertight offset surface (``vilearn.data.watertight``) when the inside test finds
    no volume in it (``watertight.mode: auto``) or always (``always``); the views are rendered from
    the asset itself, with its materials and textures.
    """
    timings: dict[str, float] = {}
    record = _base_record(source, config)
    shape_dir = layout.shape_dir(source.id)
    if shape_dir.exists():  # half-done by an interrupted run: start it again cleanly
        shutil.rmtree(shape_dir)
    try:
        clock = time.perf_counter()
        mesh = load_source(source)
        validate(mesh, config.max_faces, config.min_thickness)
        mesh, normalization = normalize(mesh, config.margin)
        timings["load"] = time.perf_counter() - clock

        geometry, watertight = mesh, None
        if config.watertight.mode == "always":
            geometry, watertight = _watertight(source.id, mesh, config, "always", timings), "always"
        points, normals, occupancy = _samples(source.id, geometry, config, timings)
        if watertight is None and (why := _needs_watertight(geometry, occupancy, config.watertight)):
            geometry, watertight = _watertight(source.id, mesh, config, why, timings), why
            points, normals, occupancy = _samples(source.id, geometry, config, timings)
        if _no_volume(occupancy):
            raise MeshError("no volume: no query point is inside (open sheet or degenerate mesh)")
        write_npz(layout.mesh(source.id), compress=True, vertices=geometry.vertices.astype(np.float32),
                  faces=geometry.faces.astype(np.int32), face_colors=geometry.face_rgb())
        sharp, sharp_normals = _sharp_samples(source.id, geometry, config, timings)
        write_npz(layout.surface(source.id), points=points, normals=normals,
                  sharp_points=sharp, sharp_normals=sharp_normals)
        write_npz(layout.occupancy(source.id), **occupancy)
        inside_fraction = float(occupancy["uniform_labels"].mean())

        clock = time.perf_counter()
        visible_counts = _render_views(source.id, mesh, layout, config)
        timings["render"] = time.perf_counter() - clock
    except MeshError as error:
        return _finish(layout, source, {**record, "status": "failed", "reason": str(error)}, timings)
    except Exception as error:  # noqa: BLE001  (one bad asset must not stop a million-shape run)
        reason = f"internal error: {type(error).__name__}: {error}"
        return _finish(layout, source, {**record, "status": "failed", "reason": reason}, timings)
    record.update(
        status="ok",
        reason="",
        vertices=len(mesh.vertices),
        faces=len(mesh.faces),
        normalization=normalization.to_dict(),
        inside_fraction=round(inside_fraction, 6),
        sharp_points=len(sharp),
        views=len(visible_counts),
        visible_counts=visible_counts,
        warnings=mesh.warnings,
        watertight=None if watertight is None else {"why": watertight, "faces": len(geometry.faces)},
    )
    return _finish(layout, source, record, timings)


def _no_volume(occupancy: dict[str, np.ndarray]) -> bool:
    return not occupancy["uniform_labels"].any() and not occupancy["near_labels"].any()


def _needs_watertight(mesh: Mesh, occupancy: dict[str, np.ndarray], config: WatertightConfig) -> str:
    """Why ``auto`` remeshes this shape ("" when it does not); see ``WatertightConfig``."""
    if config.mode != "auto":
        return ""
    if _no_volume(occupancy):
        return "no volume"
    near = float(occupancy["near_labels"].mean())
    if near < config.auto_near_inside:
        return f"almost no volume: {near:.1%} of near-surface points inside < {config.auto_near_inside:.0%}"
    if config.auto_max_ambiguous < 1.0:
        near_points = occupancy["near_points"][:AMBIGUITY_POINTS]
        winding = np.abs(winding_numbers(mesh.vertices, mesh.faces, near_points))
        ambiguous = float(((winding > 0.2) & (winding < 0.8)).mean())
        if ambiguous > config.auto_max_ambiguous:
            return (f"open surface: {ambiguous:.0%} of near-surface points have ambiguous winding numbers"
                    f" > {config.auto_max_ambiguous:.0%}")
    return ""


def _samples(shape_id: str, geometry: Mesh, config: PrepareConfig, timings: dict):
    """Surface samples (S, 3) + normals (S, 3) and occupancy supervision of one geometry."""
    clock = time.perf_counter()
    rng = shape_rng(config.seed, shape_id, "points")
    points, normals = sample_surface(geometry.vertices, geometry.faces, config.surface_points, rng)
    timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - clock
    clock = time.perf_counter()
    occupancy = occupancy_samples(
        geometry.vertices, geometry.faces, points, config.uniform_points,
        config.near_points, config.near_sigmas, rng,
    )
    timings["inside"] = timings.get("inside", 0.0) + time.perf_counter() - clock
    return points, normals, occupancy


def _sharp_samples(shape_id: str, geometry: Mesh, config: PrepareConfig, timings: dict):
    """Samples (K, 3) + normals (K, 3) on the sharp edges of the geometry the surface samples
    come from (K = 0 when it has none)."""
    clock = time.perf_counter()
    sharp = sample_sharp_edges(geometry.vertices, geometry.faces, config.sharp_points,
                               config.sharp_angle_deg, shape_rng(config.seed, shape_id, "sharp"))
    timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - clock
    return sharp


def _watertight(shape_id: str, mesh: Mesh, config: PrepareConfig, why: str, timings: dict) -> Mesh:
    """The closed offset surface of ``mesh``, coloured from the nearest point of the asset."""
    import igl

    clock = time.perf_counter()
    rng = shape_rng(config.seed, shape_id, "watertight")
    vertices, faces = watertight_mesh(mesh.vertices, mesh.faces, config.watertight, rng)
    if len(faces) == 0:
        raise MeshError(f"watertight ({why}): the offset surface is empty")
    centroids = vertices[faces].mean(axis=1)
    _, nearest, closest = igl.point_mesh_squared_distance(centroids, mesh.vertices, mesh.faces)
    weights = barycentric(closest, mesh.vertices[mesh.faces[nearest]])
    colors = np.clip(np.rint(mesh.colors().color_at(nearest, weights)), 0, 255).astype(np.uint8)
    timings["watertight"] = time.perf_counter() - clock
    return Mesh(vertices, faces, Appearance(faces, colors))


def _render_views(shape_id: str, mesh, layout: DatasetLayout, config: PrepareConfig) -> list[int]:
    view_config = config.views
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    cameras = view_cameras(view_config, radius, shape_rng(config.seed, shape_id, "cameras"))
    raycaster = Raycaster(mesh.vertices, mesh.faces, mesh.colors())
    subsample_rng = shape_rng(config.seed, shape_id, "visible")
    counts = []
    for index, camera in enumerate(cameras):
        view = raycaster.render(camera, view_config.ambient, view_config.diffuse)
        count = len(view.points)
        keep = np.sort(subsample_rng.permutation(count)[: view_config.visible_points])
        write_npz(
            layout.view(shape_id, index),
            compress=("mask", "depth", "normal"),  # mostly background: ~10x smaller; points are not
            **camera.to_arrays(),
            mask=view.mask,
            depth=view.depth,
            normal=view.normal.astype(np.float16),
            visible_points=view.points[keep],
            visible_normals=view.point_normals[keep].astype(np.float16),
            visible_count=np.int64(count),
        )
        write_png(layout.view_image(shape_id, index), view.rgb)
        counts.append(count)
    return counts


def _finish(layout: DatasetLayout, source: Source, record: dict, timings: dict) -> JobResult:
    write_json(layout.record(source.id), record)
    return JobResult(record, timings)


def _load_done(layout: DatasetLayout, source: Source) -> dict | None:
    path = layout.record(source.id)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (json.JSONDecodeError, OSError):
        return None
    return record if record.get("id") == source.id else None


def _job(args: tuple[Source, str, dict]) -> JobResult:
    source, root, config_dict = args

    config = from_dict(PrepareConfig, config_dict)
    return process_shape(source, DatasetLayout(root), config)


def _stopped(args: tuple[Source, str, dict], reason: str, timed_out: bool) -> JobResult:
    """The failure record of a job whose worker was stopped (``timed_out``: with the limit it
    ran under, see ``_retry``) or died; the files it left are removed."""
    source, root, config_dict = args
    from vilearn.config import from_dict

    config, layout = from_dict(PrepareConfig, config_dict), DatasetLayout(root)
    shutil.rmtree(layout.shape_dir(source.id), ignore_errors=True)
    record = {**_base_record(source, config), "status": "failed", "reason": reason}
    if timed_out:
        record["time_limit_s"] = config.time_limit_s
    return _finish(layout, source, record, {})


def _retry(record: dict, time_limit_s: float) -> bool:
    """A shape stopped at an earlier, shorter time limit is tried again under a longer one."""
    if record.get("status") != "failed" or "time_limit_s" not in record:
        return False
    return time_limit_s == 0 or time_limit_s > record["time_limit_s"]


def write_manifest(path: Path, rows: Iterable[dict]) -> None:
    ordered = sorted(rows, key=lambda row: row["id"])
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in ordered))


RUN_SETTINGS = ("time_limit_s",)  # PrepareConfig keys that are not the dataset's identity


def _check_dataset_config(layout: DatasetLayout, config: PrepareConfig) -> bool:
    """Record the settings in dataset.json; a dataset with prepared shapes must keep its own.
    Returns True when the folder starts afresh (new, or no shape was prepared yet)."""
    settings = {k: v for k, v in to_dict(config).items() if k not in RUN_SETTINGS}
    wanted = {"format_version": FORMAT_VERSION, "prepare": settings}
    if layout.config.is_file():
        try:
            existing = read_json(layout.config)
        except (OSError, json.JSONDecodeError):
            existing = {}  # torn by a crash before any shape: judged below like other settings
        try:  # settings added since the dataset was made take their defaults
            defaulted = to_dict(from_dict(PrepareConfig, existing.get("prepare")))
            existing["prepare"] = {k: v for k, v in defaulted.items() if k not in RUN_SETTINGS}
        except ConfigError:
            pass
        if existing == wanted:
            return False
        if next((layout.root / "shapes").glob("*/record.json"), None) is not None:
            old = {"format_version": existing.get("format_version"), **existing.get("prepare", {})}
            new = {"format_version": FORMAT_VERSION, **wanted["prepare"]}
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ConfigError(
                f"{layout.root}: already prepared with different settings (dataset.json differs "
                f"in {', '.join(keys)}); use another output folder, or the same settings to resume"
            )
    write_json(layout.config, wanted)  # nothing prepared yet: the new settings apply
    return True


@dataclass
class PrepareSummary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # "id (source)" -> reason; the first 100
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def prepare_dataset(
    source: str | Path,
    out: str | Path,
    config: PrepareConfig,
    workers: int = 1,
    limit: int | None = None,
    progress: Callable[[JobResult, PrepareSummary], None] | None = None,
    manifest_every_s: float = 300.0,
    shard: Shard | None = None,
) -> PrepareSummary:
    """Prepare every asset of ``source`` (of ``shard``) into ``out``; resumable, never
    duplicating a shape.

    Shapes whose ``record.json`` exists are kept as they are (failed ones too: failures are
    deterministic), except those stopped by a shorter time limit than ``config``'s; anything
    else is (re)done. The manifest (with ``shard``: that shard's part) is rewritten, atomically,
    every ``manifest_every_s`` seconds and at the end. ``limit`` takes the first assets of the
    whole source, before sharding, so every shard agrees on the set. Nothing is written before
    ``source`` is found to hold meshes; a folder without any prepared shape takes new settings.

    Raises:
        FileNotFoundError: ``source`` is not a folder, or holds no mesh file.
        ConfigError: ``out`` has shapes prepared with other settings.
    """
    sources = list(iter_sources(source))
    if not sources:
        raise FileNotFoundError(f"source {str(source)!r}: no mesh files ({' '.join(MESH_SUFFIXES)}) in it")
    if limit is not None:
        sources = sources[:limit]
    if shard is not None:
        sources = [src for src in sources if shard.owns(src.id)]
    layout = DatasetLayout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(layout.root)
    fresh = _check_dataset_config(layout, config)
    manifest = layout.manifest if shard is None else manifest_part(layout, shard)
    rows = {} if fresh else {row["id"]: row for row in read_manifest(manifest)}
    summary = PrepareSummary(total=len(sources))
    todo = []
    for src in sources:
        done = _load_done(layout, src)
        if done is None or _retry(done, config.time_limit_s):
            todo.append(src)
            continue
        rows[src.id] = done
        summary.skipped += 1
        _count(summary, JobResult(done, {}, skipped=True), progress)

    start = last_flush = time.perf_counter()
    config_dict = to_dict(config)
    jobs = [(src, str(layout.root), config_dict) for src in todo]
    try:
        for result in _map(jobs, workers, config.time_limit_s):
            rows[result.record["id"]] = result.record
            _count(summary, result, progress)
            if time.perf_counter() - last_flush > manifest_every_s:
                write_manifest(manifest, rows.values())
                last_flush = time.perf_counter()
    finally:
        write_manifest(manifest, rows.values())
        if shard is None:  # a shard sees only its rows: merge_manifests writes the credits
            write_credits(layout, rows.values())
    summary.seconds = time.perf_counter() - start
    return summary


def write_credits(layout: DatasetLayout, rows: Iterable[dict]) -> None:
    """``CREDITS``: the attributions the dataset's prepared models require (sources with ``meta``)."""
    from vilearn.data.sweethome3d import credits_text

    credited = [row for row in rows if row.get("status") == "ok" and row.get("meta")]
    if credited:
        write_text(layout.credits, credits_text(credited))


def reason_kind(reason: str) -> str:
    """The kind of a failure, for counting: "flat mesh: zero thickness ..." -> "flat mesh"."""
    return reason.split(":")[0].split(" (")[0]


def _count(summary: PrepareSummary, result: JobResult, progress) -> None:
    record = result.record
    if record["status"] == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
        key = reason_kind(record["reason"])
        summary.reasons[key] = summary.reasons.get(key, 0) + 1
        if len(summary.failures) < 100:
            summary.failures[f"{record['id']} ({record.get('source', '?')})"] = record["reason"]
    for stage, seconds in result.timings.items():
        summary.timings[stage] = summary.timings.get(stage, 0.0) + seconds
    if progress is not None:
        progress(result, summary)


def _map(jobs: list, workers: int, time_limit_s: float = 0.0) -> Iterator[JobResult]:
    """Each job's result, as they finish. In this process when there is one worker and no time
    limit; else in worker processes (``pebble``), each job stopped with its worker after
    ``time_limit_s`` seconds, a dead worker replaced; both become failure records."""
    if time_limit_s <= 0 and (workers <= 1 or len(jobs) <= 1):
        for job in jobs:
            yield _job(job)
        return
    from pebble import ProcessExpired, ProcessPool

    context = multiprocessing.get_context("spawn" if _threads_started() else "fork")
    pool = ProcessPool(max_workers=max(1, min(workers, len(jobs))), max_tasks=200, context=context)
    queue, pending = iter(jobs), {}
    try:
        while True:
            for job in itertools.islice(queue, 4 * max(1, workers) - len(pending)):
                pending[pool.schedule(_job, (job,), timeout=time_limit_s or None)] = job
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    yield future.result()
                except TimeoutError:
                    yield _stopped(job, f"time limit: the shape took more than {time_limit_s:g} s "
                                        "(prepare's time_limit_s); its job was stopped", True)
                except ProcessExpired as error:
                    yield _stopped(job, f"worker died: {error} (exit code {error.exitcode})", False)
    finally:
        pool.stop()
        pool.join()


def _threads_started() -> bool:
    import threading

    return threading.active_count() > 1
