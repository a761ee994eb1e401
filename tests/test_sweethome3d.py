"""Sweet Home 3D furniture catalogues as a dataset source: a catalogue written by the test, and
a handful of the real models of Debian's sweethome3d-furniture (required in CI)."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.data.mesh import iter_sources, load_source
from vilearn.data.prepare import prepare_dataset
from vilearn.data.sweethome3d import DEFAULT_ROOTS, parse_properties

BOX_OBJ = """mtllib {name}.mtl
v -1 -1 -2
v 1 -1 -2
v 1 1 -2
v -1 1 -2
v -1 -1 2
v 1 -1 2
v 1 1 2
v -1 1 2
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl {material}
f 1/1 3/3 2/2
f 1/1 4/4 3/3
f 5/1 6/2 7/3
f 5/1 7/3 8/4
f 1/1 2/2 6/3
f 1/1 6/3 5/4
f 2/1 3/2 7/3
f 2/1 7/3 6/4
f 3/1 4/2 8/3
f 3/1 8/3 7/4
f 4/1 1/2 5/3
f 4/1 5/3 8/4
"""


def _write_catalog(path: Path) -> Path:
    """A two-model CC-BY catalogue: 'tower' (tall along its OBJ z, turned y-up by modelRotation,
    textured) and 'crate' (no rotation, its texture missing from the archive)."""
    properties = "\n".join([
        "# a test catalogue", "id=Test#Catalog", "name=Test catalogue",
        "license=Creative Commons Attribution 3.0 license", "provider=tests",
        "id#1=Test#tower", "name#1=Tall tower", "category#1=Misc", "creator#1=Ada \\u00c5berg",
        "model#1=/test/tower/tower.obj", "width#1=10", "depth#1=10", "height#1=40",
        "modelRotation#1=1 0 0 0 0 1 0 -1 0",
        "id#2=Test#crate", "name#2=Crate", "category#2=Misc", "creator#2=Bo",
        "model#2=/test/crate/crate.obj", "width#2=20", "depth#2=20", "height#2=20",
    ])
    texture = Path(path.parent / "wood.png")
    Image.fromarray(np.full((4, 4, 3), (200, 120, 40), np.uint8)).save(texture)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("PluginFurnitureCatalog.properties", properties)
        archive.writestr("LICENSE.TXT", "CC-BY 3.0")
        archive.writestr("test/tower/tower.obj", BOX_OBJ.format(name="tower", material="wood"))
        archive.writestr("test/tower/tower.mtl", "newmtl wood\nKd 1 1 1\nmap_Kd wood.png\n")
        archive.write(texture, "test/tower/wood.png")
        archive.writestr("test/crate/crate.obj", BOX_OBJ.format(name="crate", material="paint"))
        archive.writestr("test/crate/crate.mtl", "newmtl paint\nKd 1 1 1\nmap_Kd gone.jpg\n")
    return path


def test_java_properties_are_parsed_with_escapes_continuations_and_comments():
    text = "# comment\n! also\nname#1 = Caf\\u00e9\nlong=a \\\n   b\ncolon:x\n\n"
    assert parse_properties(text) == {"name#1": "Café", "long": "a b", "colon": "x"}


def test_models_are_read_from_the_archive_with_ids_metadata_and_their_rotation(tmp_path):
    catalog = _write_catalog(tmp_path / "Test-Catalog.sh3f")
    sources = list(iter_sources(f"sweethome3d:{tmp_path}"))
    assert [s.id for s in sources] == ["Test-Catalog__tower", "Test-Catalog__crate"]
    tower = sources[0]
    assert tower.location == f"{catalog}!test/tower/tower.obj"
    assert tower.meta["name"] == "Tall tower" and tower.meta["creator"] == "Ada Åberg"
    assert tower.meta["license"].startswith("Creative Commons Attribution")
    assert tower.meta["size_cm"] == [10.0, 10.0, 40.0]
    mesh = load_source(tower)
    # OBJ z (length 4) -> y-up by modelRotation -> z-up for the dataset: the tower stands on z
    extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    assert np.allclose(extent, (2, 2, 4))
    assert mesh.warnings == []
    assert np.allclose(mesh.face_rgb(), (200, 120, 40), atol=1)  # the texture, read from the archive


def test_prepare_records_metadata_warnings_and_credits(tmp_path, tiny_prepare_config):
    (tmp_path / "src").mkdir()
    _write_catalog(tmp_path / "src" / "Test-Catalog.sh3f")
    out = tmp_path / "data"
    summary = prepare_dataset(f"sweethome3d:{tmp_path / 'src'}", out, tiny_prepare_config)
    assert summary.ok == 2
    lines = (out / "manifest.jsonl").read_text().splitlines()
    rows = {row["id"]: row for row in map(json.loads, lines)}
    crate = rows["Test-Catalog__crate"]
    assert crate["meta"]["creator"] == "Bo"
    assert any("gone.jpg" in w for w in crate["warnings"])
    assert rows["Test-Catalog__tower"]["warnings"] == []
    credits = (out / "CREDITS").read_text()
    assert "Test-Catalog__tower: Tall tower, by Ada Åberg, Test catalogue" in credits
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0 and "Ada Åberg" in result.output


def _real_catalogs() -> Path | None:
    root = next((r for r in DEFAULT_ROOTS if r.is_dir()), None)
    if root is None:
        message = ("Debian's sweethome3d-furniture is not installed (apt-get install sweethome3d-furniture);"
                   f" looked in {', '.join(map(str, DEFAULT_ROOTS))}")
        if os.environ.get("VILEARN_REQUIRE_FURNITURE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


def test_real_furniture_models_go_through_prepare_and_inspect(tmp_path, tiny_prepare_config):
    root = _real_catalogs()
    out = tmp_path / "furniture"
    # the first models of the CC-BY catalogue: a textured tree, a backpack made of open sheets
    # (watertight step), a bath
    source = f"sweethome3d:{root / 'BlendSwap-CC-BY.sh3f'}"
    summary = prepare_dataset(source, out, tiny_prepare_config, limit=3)
    assert summary.ok == 3, summary.reasons
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["BlendSwap-CC-BY__arbolito", "BlendSwap-CC-BY__backpack",
                                       "BlendSwap-CC-BY__bath_jay_hardy"]
    backpack = rows[1]
    assert backpack["watertight"]["why"] == "no volume" and backpack["inside_fraction"] > 0.005
    assert backpack["meta"]["creator"] == "Jo.3D"
    assert "BlendSwap-CC-BY__backpack: Backpack, by Jo.3D" in (out / "CREDITS").read_text()
    # the tree's renders carry its colours: not a grey image
    image = np.asarray(Image.open(out / "shapes" / "BlendSwap-CC-BY__arbolito" / "views" / "000.png"))
    object_pixels = image[(image < 250).any(axis=2)]
    assert object_pixels.std(axis=0).max() > 10 and np.ptp(object_pixels.mean(axis=0)) > 10
    result = CliRunner().invoke(app, ["inspect", str(out), "--sheet", str(tmp_path / "sheet.png")])
    assert result.exit_code == 0 and (tmp_path / "sheet.png").is_file()
    assert "CC-BY" in result.output or "Attribution" in result.output
