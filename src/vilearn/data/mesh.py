"""Mesh sources, loading, validation and normalisation into the [-1, 1]^3 object frame."""

from __future__ import annotations

import io
import posixpath
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from vilearn.data.appearance import NEUTRAL_RGB, Appearance, Material

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
PYBULLET_PREFIX = "pybullet:"
SWEETHOME3D_PREFIX = "sweethome3d:"


class MeshError(ValueError):
    """A mesh cannot be used; the message says why (it is recorded in the manifest)."""


@dataclass
class Mesh:
    """A triangle mesh and how its surface is coloured.

    vertices (V, 3) float64, faces (F, 3) int64; ``appearance`` (``vilearn.data.appearance``:
    face / vertex colours, materials, UV textures) or None for neutral grey; ``warnings`` what
    loading noticed but survived (a missing texture, an undefined material), for the manifest.
    """

    vertices: np.ndarray
    faces: np.ndarray
    appearance: Appearance | None = None
    warnings: list[str] = field(default_factory=list)

    def to_trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices, self.faces, process=False)

    def colors(self) -> Appearance:
        return self.appearance if self.appearance is not None else Appearance.flat(self.faces)

    def face_rgb(self) -> np.ndarray:
        """(F, 3) uint8 base colour per face (the colour at its centroid)."""
        return self.colors().face_rgb()


@dataclass(frozen=True)
class Source:
    """One asset to prepare: a stable ``id``, the mesh ``path``, an optional flat ``color``.

    ``member``: the mesh's path inside ``path`` when ``path`` is a ZIP archive (or a folder) of
    models, its textures beside it there; ``rotation``: a row-major 3x3 (9 floats) applied to the
    loaded vertices; ``meta``: what the source knows of the asset (name, creator, licence...),
    copied into the manifest.
    """

    id: str
    path: Path
    color: tuple[int, int, int] | None = None
    member: str | None = None
    rotation: tuple[float, ...] | None = None
    meta: dict | None = None

    @property
    def location(self) -> str:
        """Where the asset is, for the manifest: the file, or ``archive!member``."""
        return str(self.path) if self.member is None else f"{self.path}!{self.member}"


def shape_id(relative: Path) -> str:
    """A stable, filesystem-safe id from a path relative to the source root (suffix dropped)."""
    text = "__".join(relative.with_suffix("").parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def pybullet_root(name: str) -> Path:
    import pybullet_data

    root = Path(pybullet_data.getDataPath()) / name
    if not root.is_dir():
        raise FileNotFoundError(f"source 'pybullet:{name}': no folder {root} in pybullet_data")
    return root


def _urdf_color(urdf: Path) -> tuple[int, int, int] | None:
    try:
        rgba = ET.parse(urdf).find(".//visual/material/color")
    except ET.ParseError:
        return None
    if rgba is None:
        return None
    values = [float(x) for x in rgba.get("rgba", "").split()[:3]]
    return tuple(int(round(255 * min(max(v, 0.0), 1.0))) for v in values) if len(values) == 3 else None


def _pybullet_sources(name: str) -> Iterator[Source]:
    root = pybullet_root(name)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in MESH_SUFFIXES:
            urdf = path.with_suffix(".urdf")
            color = _urdf_color(urdf) if urdf.is_file() else None
            relative = path.relative_to(root)
            if relative.parent.name == relative.stem:  # random_urdfs/000/000.obj -> "000"
                relative = relative.parent
            yield Source(shape_id(relative), path, color)


def _sweethome3d_sources(spec: str) -> Iterator[Source]:
    from vilearn.data.sweethome3d import catalog_models, find_catalogs

    for catalog in find_catalogs(spec):
        for model in catalog_models(catalog):
            yield Source(model.id, model.archive, member=model.member, rotation=model.rotation,
                         meta=model.meta)


def iter_sources(source: str | Path) -> Iterator[Source]:
    """The assets of ``source``: a folder searched recursively, ``pybullet:random_urdfs``, or
    ``sweethome3d:furniture`` / ``sweethome3d:PATH`` (furniture catalogues, read in place).

    Sources come sorted (by path; catalogues in their own order), so ``--limit K`` always takes
    the same K assets.
    """
    text = str(source)
    if text.startswith(PYBULLET_PREFIX):
        yield from _pybullet_sources(text[len(PYBULLET_PREFIX):])
        return
    if text.startswith(SWEETHOME3D_PREFIX):
        yield from _sweethome3d_sources(text[len(SWEETHOME3D_PREFIX):])
        return
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(
            f"source {text!r}: not a folder (and not 'pybullet:<folder>' or 'sweethome3d:<catalogues>')"
        )
    seen: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in MESH_SUFFIXES:
            sid = shape_id(path.relative_to(root))
            if sid in seen:  # a.obj next to a.glb: keep both, apart
                sid = f"{sid}_{path.suffix.lower().lstrip('.')}"
            seen[sid] = path
            yield Source(sid, path)


class ArchiveResolver(trimesh.resolvers.Resolver):
    """trimesh's view of the files next to a model inside a ZIP archive or folder of models
    (``files``: a ``vilearn.data.sweethome3d.CatalogFiles``), relative to the model's folder.

    Names are looked up as written, then without MTL options (``-s 1 1 1 wood.jpg``: trimesh
    passes them on), then by their base name (``C:\\Users\\...\\wood.jpg`` exported next to
    the model): the places assets of real collections put their textures.
    """

    def __init__(self, files, folder: str):
        self.files, self.folder = files, folder.strip("/")

    def _candidates(self, name: str) -> list[str]:
        name = str(name).replace("\\", "/")
        stripped = _map_file(name.split())
        names = [name, stripped, posixpath.basename(stripped)]
        return [posixpath.normpath(posixpath.join(self.folder, n)) for n in names if n]

    def _has(self, key: str) -> bool:
        return key in self.files.names

    def _read(self, key: str) -> bytes:
        return self.files.read(key)

    def exists(self, name: str) -> bool:
        return any(self._has(key) for key in self._candidates(name))

    def get(self, name: str) -> bytes:
        for key in self._candidates(name):
            if self._has(key):
                return self._read(key)
        raise KeyError(f"no file {name!r} beside the model")

    def keys(self):
        prefix = self.folder + "/" if self.folder else ""
        return [n[len(prefix):] for n in self.files.names if n.startswith(prefix)]

    def write(self, name, data):
        raise OSError("models are read-only")

    def namespaced(self, namespace: str) -> ArchiveResolver:
        return type(self)(self.files, posixpath.join(self.folder, namespace))


class FolderResolver(ArchiveResolver):
    """The same lookups in a model's folder on disk (``files`` is that folder)."""

    def _has(self, key: str) -> bool:
        return (Path(self.files) / key).is_file()

    def _read(self, key: str) -> bytes:
        return (Path(self.files) / key).read_bytes()

    def keys(self):
        root = Path(self.files) / self.folder
        return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


# MTL texture options and how many values each takes (the file name comes after them).
_MAP_OPTIONS = {"-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1,
                "-imfchan": 1, "-mm": 2, "-o": 3, "-s": 3, "-t": 3, "-texres": 1}


def _map_file(tokens: list[str]) -> str:
    """The file name of an MTL ``map_Kd`` statement: its options skipped, spaces kept."""
    index = 0
    while index < len(tokens) and tokens[index].lower() in _MAP_OPTIONS:
        index += 1
        for _ in range(_MAP_OPTIONS[tokens[index - 1].lower()]):
            if index < len(tokens) - 1 and re.fullmatch(r"[-+0-9.eE]+|on|off", tokens[index]):
                index += 1
    return " ".join(tokens[index:])


def _obj_material_check(obj: bytes, resolver: ArchiveResolver) -> tuple[list[str], set[str]]:
    """What an OBJ's materials are: (warnings, names of the materials that may be drawn).

    A missing .mtl, a material used but defined nowhere, or a texture file that is not there
    becomes a warning; only materials defined with all their files are drawn, the others in
    neutral grey rather than trimesh's fallback (a dark checker for UVs without a material).
    """
    warnings, neutral, defined = [], set(), set()
    references = re.findall(rb"^[ \t]*(mtllib|usemtl)[ \t]+([^\r\n]+?)[ \t]*$", obj, re.M)
    for kind, name in references:
        if kind != b"mtllib":
            continue
        library = name.decode("utf-8", "replace")
        if not resolver.exists(library):
            warnings.append(f"material library {library!r} not found")
            continue
        current = None
        for line in resolver.get(library).decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "newmtl":
                current = " ".join(parts[1:])
                defined.add(current)
            elif len(parts) >= 2 and parts[0].lower() == "map_kd" and current is not None:
                texture = _map_file(parts[1:])
                if not resolver.exists(texture):
                    warnings.append(f"texture {texture!r} of material {current!r} not found")
                    neutral.add(current)
    for kind, name in references:
        used = name.decode("utf-8", "replace")
        if kind == b"usemtl" and used not in defined and used not in neutral:
            warnings.append(f"material {used!r} is used but not defined")
            neutral.add(used)
    return warnings, defined - neutral


@dataclass
class _Part:
    """One scene part's colours: flat (F, 3) uint8, vertex (V, 3) or None, uv (V, 2) or None."""

    flat: np.ndarray
    vertex: np.ndarray | None = None
    uv: np.ndarray | None = None
    material: Material | None = None


def _part_colors(part: trimesh.Trimesh, drawable: set[str] | None) -> _Part:
    """A part's colours; ``drawable``: for OBJ files, the materials whose files are all there."""
    flat = np.tile(np.asarray(NEUTRAL_RGB, np.uint8), (len(part.faces), 1))
    visual = part.visual
    try:
        if visual.kind == "texture":
            material = visual.material
            if hasattr(material, "to_simple"):  # glTF's PBR: base colour texture and factor
                material = material.to_simple()
            name = str(getattr(material, "name", "") or "")
            if drawable is not None and name not in drawable:
                return _Part(flat)
            image = getattr(material, "image", None)
            uv = None if visual.uv is None else np.asarray(visual.uv, np.float64)
            texture = None if image is None or uv is None else np.asarray(image.convert("RGB"), np.uint8)
            diffuse = np.asarray(getattr(material, "diffuse", (255, 255, 255)), np.float64)[:3] / 255.0
            return _Part(flat, None, uv, Material(diffuse, texture, name))
        if visual.kind == "face":
            return _Part(np.asarray(visual.face_colors)[:, :3].astype(np.uint8))
        if visual.kind == "vertex":
            return _Part(flat, np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8))
    except Exception:  # noqa: BLE001  (a broken texture must not lose the geometry)
        return _Part(flat)
    return _Part(flat)


def _combine(parts: list[trimesh.Trimesh], drawable: set[str] | None) -> Mesh:
    """One Mesh from scene parts, each keeping its own colours, material and texture."""
    colors = [_part_colors(part, drawable) for part in parts]
    sizes = [len(part.vertices) for part in parts]
    offsets = np.cumsum([0, *sizes[:-1]])
    faces = np.concatenate([np.asarray(p.faces, np.int64) + o for p, o in zip(parts, offsets)])
    materials = tuple(c.material for c in colors if c.material is not None)
    colored = np.concatenate([np.full(len(p.faces), c.vertex is not None) for p, c in zip(parts, colors)])
    appearance = Appearance(faces, np.concatenate([c.flat for c in colors]))
    if colored.any():
        appearance.vertex_colored = colored
        appearance.vertex_colors = np.concatenate(
            [c.vertex if c.vertex is not None else np.zeros((n, 3), np.uint8)
             for c, n in zip(colors, sizes)]
        )
    if materials:
        index = np.cumsum([c.material is not None for c in colors]) - 1
        appearance.materials = materials
        appearance.face_material = np.concatenate(
            [np.full(len(p.faces), i if c.material is not None else -1)
             for p, c, i in zip(parts, colors, index)]
        ).astype(np.int64)
        appearance.uv = np.concatenate(
            [c.uv if c.uv is not None else np.zeros((n, 2)) for c, n in zip(colors, sizes)]
        )
    vertices = np.concatenate([np.asarray(p.vertices, np.float64) for p in parts])
    return Mesh(vertices, faces, appearance)


def _read_model(path: Path, member: str | None):
    """(bytes, resolver, file type, display name) of a model file, or of a member of an archive."""
    if member is None:
        if not path.is_file():
            raise MeshError("no such file")
        return path.read_bytes(), FolderResolver(path.parent, ""), path.suffix, path.name
    from vilearn.data.sweethome3d import CatalogFiles

    try:
        files = CatalogFiles(path)
        data = files.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise MeshError(f"cannot read {member!r} from {path}: {error}") from error
    resolver = ArchiveResolver(files, posixpath.dirname(member.lstrip("/")))
    return data, resolver, posixpath.splitext(member)[1], member


_OBJ_ZERO_INDEX = re.compile(rb"(?m)^f[ \t][^\n]*?(?<=[ \t/])0(?=[ \t/\r\n]|$)")


def check_obj_indices(data: bytes) -> None:
    """OBJ indices start at 1 (negative ones count back); a 0 is invalid, and trimesh would read
    it silently as another vertex. Raises MeshError naming the line."""
    match = _OBJ_ZERO_INDEX.search(data)
    if match is not None:
        line = data.count(b"\n", 0, match.start()) + 1
        raise MeshError(f"OBJ face index 0 on line {line} (indices start at 1)")


def load_mesh(path: str | Path, color: tuple[int, int, int] | None = None, member: str | None = None,
              rotation: tuple[float, ...] | None = None) -> Mesh:
    """Load any trimesh-readable file; scenes are flattened with their node transforms, each part
    keeping its own colours, material and texture.

    ``member``: the model's path inside ``path``, a ZIP archive (e.g. a Sweet Home 3D ``.sh3f``)
    or a folder of models; its .mtl and textures are read from beside it there, nothing is
    unpacked. ``color`` paints every face one flat colour; ``rotation`` (row-major 3x3) turns the
    vertices. Missing material libraries and textures are survived: those materials are drawn
    neutral grey and ``Mesh.warnings`` says what was missing.

    Raises:
        MeshError: the file is missing, empty, unreadable, or holds no triangles.
    """
    data, resolver, file_type, name = _read_model(Path(path), member)
    if len(data) == 0:
        raise MeshError("empty file (0 bytes)")
    file_type = file_type.lower().lstrip(".")
    if file_type == "obj":
        check_obj_indices(data)
    warnings, drawable = _obj_material_check(data, resolver) if file_type == "obj" else ([], None)
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, resolver=resolver, process=False)
    except Exception as error:  # noqa: BLE001  (loaders raise anything on garbage input)
        raise MeshError(f"not a readable mesh ({type(error).__name__}: {error})") from error
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        parts = []
    geometry = list(loaded.geometry.values()) if isinstance(loaded, trimesh.Scene) else [loaded]
    if not any(len(getattr(g, "vertices", ())) for g in geometry):
        raise MeshError(f"not a mesh: nothing could be read from this .{file_type} file ({name})")
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        raise MeshError(f"no triangle faces in {name}")
    mesh = _combine(parts, drawable)
    mesh.warnings = warnings
    if color is not None:
        mesh.appearance = Appearance.flat(mesh.faces, color)
    if rotation is not None:
        mesh.vertices = mesh.vertices @ np.asarray(rotation, np.float64).reshape(3, 3).T
    return mesh


def load_source(source: Source) -> Mesh:
    """The mesh of one source, as ``prepare`` sees it."""
    return load_mesh(source.path, source.color, source.member, source.rotation)


def validate(mesh: Mesh, max_faces: int, min_thickness: float) -> None:
    """Raise MeshError naming the problem when the mesh cannot give a volume.

    Checks: finite vertices, faces present, valid indices, at most ``max_faces`` faces,
    non-zero extent, and a thickness (smallest / largest bounding-box extent) of at least
    ``min_thickness``: a flat mesh has no inside, so occupancy is undefined for it.
    """
    v, f = mesh.vertices, mesh.faces
    if len(f) == 0:
        raise MeshError("no faces")
    if len(f) > max_faces:
        raise MeshError(f"too many faces: {len(f):,} > max_faces {max_faces:,} (decimate it first)")
    if f.ndim != 2 or f.shape[1] != 3:
        raise MeshError(f"faces must be triangles, got shape {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"face indices out of range [0, {len(v)})")
    used = v[np.unique(f)]
    if not np.isfinite(used).all():
        bad = int((~np.isfinite(used).all(axis=1)).sum())
        raise MeshError(f"{bad} vertices are NaN or infinite")
    extent = used.max(axis=0) - used.min(axis=0)
    if extent.max() <= 1e-12:
        raise MeshError("zero extent: all vertices coincide")
    thinnest = extent.min() / extent.max()
    if thinnest < min_thickness:
        axis = "xyz"[int(extent.argmin())]
        raise MeshError(
            f"flat mesh: zero thickness along {axis} (extent ratio {thinnest:.2e} < {min_thickness:g}),"
            " so it has no inside"
        )


@dataclass(frozen=True)
class Normalization:
    """``normalised = (source - center) * scale``; ``source = normalised / scale + center``."""

    center: tuple[float, float, float]
    scale: float

    def to_dict(self) -> dict:
        return {"center": list(self.center), "scale": self.scale}


def normalize(mesh: Mesh, margin: float) -> tuple[Mesh, Normalization]:
    """Centre the bounding box at the origin and scale its largest side to 2 * (1 - margin).

    Unreferenced vertices are dropped first, so stray points cannot shrink the shape.
    """
    used, inverse = np.unique(mesh.faces, return_inverse=True)
    vertices = mesh.vertices[used]
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    center = (low + high) / 2
    scale = 2 * (1 - margin) / float((high - low).max())
    faces = inverse.reshape(-1, 3).astype(np.int64)
    appearance = None if mesh.appearance is None else mesh.appearance.renumbered(used, faces)
    out = Mesh((vertices - center) * scale, faces, appearance, list(mesh.warnings))
    return out, Normalization(tuple(float(c) for c in center), scale)
