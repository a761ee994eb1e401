"""The package's import graph runs one way: machinery <- models <- trainers <- CLI."""

import ast
from pathlib import Path

import vilearn

PACKAGE = Path(vilearn.__file__).parent

# module -> the vilearn packages it must never import (directly or inside a function).
FORBIDDEN = {
    "engine": {"vae", "train", "dit", "grouping", "bench", "cli", "demo", "data", "flow", "metrics"},
    "vae": {"train", "dit", "bench", "cli", "demo", "flow"},
    "data": {"vae", "train", "dit", "grouping", "bench", "cli", "demo", "engine"},
    "dit": {"train", "vae", "bench", "cli", "demo", "engine"},
    "flow": {"train", "vae", "bench", "cli", "demo", "engine"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vilearn."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("vilearn."))
    return names


def test_imports_run_one_way():
    offences = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            bad = _imported_packages(path) & forbidden
            if bad:
                offences.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not offences, "\n".join(offences)
