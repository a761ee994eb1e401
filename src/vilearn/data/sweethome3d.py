"""Sweet Home 3D furniture catalogues (``.sh3f``) as a source of real, textured objects.

A catalogue is a ZIP archive (or the folder it extracts to) holding OBJ + MTL models with their
textures and a ``PluginFurnitureCatalog.properties`` that lists every model: ``id#N``,
``name#N``, ``category#N``, ``model#N`` (its OBJ inside the archive), ``creator#N``, the real size
``width#N`` / ``depth#N`` / ``height#N`` in cm, an optional ``modelRotation#N`` (a row-major 3x3
matrix that turns the OBJ upright), and one ``license`` line for the whole catalogue. BlendSwap
models also carry a ``BLENDSWAP_LICENSE.txt`` naming the original title, author and address.

Debian's package ``sweethome3d-furniture`` installs five catalogues (820 models: CC0 for
BlendSwap-CC-0, CC-BY 3.0 for the others) in ``/usr/share/sweethome3d/furniture``.

Frames: Sweet Home 3D models are y-up after ``modelRotation``; the models are turned z-up here
(x, y, z) -> (x, -z, y), the convention of the other sources and of ``ViewConfig.up_axis``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROPERTIES = "PluginFurnitureCatalog.properties"
DEFAULT_ROOTS = (Path("/usr/share/sweethome3d/furniture"),)
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class CatalogModel:
    """One model of a catalogue: where its OBJ is, how to turn it z-up, and who made it.

    ``archive`` is the .sh3f file (or an extracted catalogue folder); ``member`` the OBJ's path
    inside it; ``rotation`` the row-major 3x3 (9 floats) taking the OBJ's coordinates to z-up.
    """

    id: str
    archive: Path
    member: str
    rotation: tuple[float, ...]
    meta: dict


def parse_properties(text: str) -> dict[str, str]:
    r"""Java ``.properties`` -> {key: value}: ``key=value`` (or ``:``) lines, ``#`` / ``!`` comment
    lines, ``\`` line continuations and ``\uXXXX`` escapes."""
    values: dict[str, str] = {}
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + next(lines, "").strip()
        match = re.match(r"([^=:\s]+)\s*[=:]?\s*(.*)$", line)
        if not line or line[0] in "#!" or match is None:
            continue
        key, value = match.groups()
        values[key] = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), value)
    return values


class CatalogFiles:
    """Read files of a catalogue by their path inside it, from a .sh3f archive or a folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._zip = zipfile.ZipFile(self.root) if self.root.is_file() else None
        names = (self._zip.namelist() if self._zip else
                 [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()])
        self.names = {name.lstrip("/") for name in names if not name.endswith("/")}

    def read(self, name: str) -> bytes:
        name = name.lstrip("/")
        if name not in self.names:
            raise KeyError(f"{self.root}: no file {name!r}")
        return self._zip.read(name) if self._zip else (self.root / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _rotation(text: str | None) -> np.ndarray:
    if not text:
        return np.eye(3)
    values = [float(x) for x in text.split()]
    if len(values) != 9:
        raise ValueError(f"modelRotation needs 9 numbers, got {text!r}")
    return np.asarray(values).reshape(3, 3)


def _blendswap_license(files: CatalogFiles, folder: str) -> dict[str, str]:
    """Title, author and address from a model's BLENDSWAP_LICENSE.txt, when it has one."""
    name = f"{folder}/BLENDSWAP_LICENSE.txt"
    if name not in files.names:
        return {}
    text = _text(files.read(name))
    found = {}
    if match := re.search(r'downloading "(.+?)" by (.+)', text):
        found["title"], found["author"] = match.group(1).strip(), match.group(2).strip()
    if match := re.search(r"Downloaded from (\S+)", text):
        found["url"] = match.group(1).strip()
    return found


def catalog_models(root: Path) -> Iterator[CatalogModel]:
    """The models of one catalogue (a .sh3f file or an extracted folder), in the catalogue's order.

    Ids are ``<catalogue file stem>__<model folder>``: stable and readable.
    """
    files = CatalogFiles(root)
    try:
        if PROPERTIES not in files.names:
            raise FileNotFoundError(f"{root}: no {PROPERTIES} (not a Sweet Home 3D catalogue)")
        props = parse_properties(_text(files.read(PROPERTIES)))
        catalog = {"catalog": props.get("name", Path(root).stem), "license": props.get("license", ""),
                   "provider": props.get("provider", "")}
        numbers = sorted(int(key.split("#")[1]) for key in props if re.fullmatch(r"model#\d+", key))
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(root).stem if Path(root).is_file() else Path(root).name)
        for n in numbers:
            member = props[f"model#{n}"].lstrip("/")
            folder = member.rsplit("/", 1)[0] if "/" in member else ""
            key = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.rsplit("/", 1)[-1] or Path(member).stem)
            size = [float(props.get(f"{k}#{n}", "nan")) for k in ("width", "depth", "height")]
            meta = {
                **catalog,
                "name": props.get(f"name#{n}", key),
                "category": props.get(f"category#{n}", ""),
                "creator": props.get(f"creator#{n}", ""),
                "catalog_id": props.get(f"id#{n}", ""),
                "size_cm": size,
                **{f"original_{k}": v for k, v in _blendswap_license(files, folder).items()},
            }
            rotation = Y_UP_TO_Z_UP @ _rotation(props.get(f"modelRotation#{n}"))
            yield CatalogModel(f"{stem}__{key}", Path(root), member, tuple(rotation.ravel()), meta)
    finally:
        files.close()


def find_catalogs(spec: str) -> list[Path]:
    """``furniture`` -> the catalogues Debian installs; a folder -> its .sh3f files and extracted
    catalogue folders (sorted). Raises FileNotFoundError with what to do when there are none."""
    if spec == "furniture":
        roots = [root for root in DEFAULT_ROOTS if root.is_dir()]
        if not roots:
            raise FileNotFoundError(
                "source 'sweethome3d:furniture': no catalogues in "
                + ", ".join(str(r) for r in DEFAULT_ROOTS)
                + " (install them: apt-get install sweethome3d-furniture; or without root:"
                " apt-get download sweethome3d-furniture && dpkg -x sweethome3d-furniture_*.deb DIR,"
                " then use sweethome3d:DIR/usr/share/sweethome3d/furniture)"
            )
    else:
        roots = [Path(spec)]
    catalogs: list[Path] = []
    for root in roots:
        if root.is_file() and root.suffix.lower() == ".sh3f":
            catalogs.append(root)
        elif (root / PROPERTIES).is_file():
            catalogs.append(root)
        elif root.is_dir():
            catalogs += sorted(
                p for p in root.iterdir() if p.suffix.lower() == ".sh3f" or (p / PROPERTIES).is_file()
            )
    if not catalogs:
        raise FileNotFoundError(f"source 'sweethome3d:{spec}': no .sh3f file or extracted catalogue there")
    return catalogs


def is_attribution_license(license_text: str) -> bool:
    """True for licences that require attribution (CC-BY and the like), False for CC0 / public domain."""
    text = license_text.lower()
    return "attribution" in text or "cc-by" in text or "cc by" in text


def credits_text(rows: list[dict]) -> str:
    """A CREDITS file for the models of a dataset that need attribution (``meta`` of manifest rows)."""
    lines = [
        "Credits for the 3D models in this dataset that are under licences requiring attribution.",
        "Each line: dataset id: model name, by creator, catalogue, licence [original title, address].",
        "",
    ]
    for row in sorted(rows, key=lambda r: r["id"]):
        meta = row.get("meta") or {}
        if not is_attribution_license(meta.get("license", "")):
            continue
        extra = ", ".join(v for v in (meta.get("original_title"), meta.get("original_url")) if v)
        creator = meta.get("original_author") or meta.get("creator") or "unknown author"
        lines.append(f"{row['id']}: {meta.get('name', '')}, by {creator}, {meta.get('catalog', '')},"
                     f" {meta.get('license', '')}" + (f" [{extra}]" if extra else ""))
    return "\n".join(lines) + "\n"
