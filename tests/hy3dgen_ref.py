"""Load hy3dgen 2.0.2 reference modules by file, skipping cleanly when the package is absent.

hy3dgen is installed with --no-deps and its package ``__init__`` imports heavy extras, so the
module files are loaded directly instead of through ``import hy3dgen``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def hy3dgen_root() -> Path | None:
    spec = importlib.util.find_spec("hy3dgen")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def load_hy3dgen_module(relative: str, name: str) -> ModuleType | None:
    """Load ``hy3dgen/<relative>`` as module ``name``, or None when hy3dgen is not installed."""
    root = hy3dgen_root()
    if root is None or not (root / relative).is_file():
        return None
    spec = importlib.util.spec_from_file_location(name, root / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hunyuan3ddit() -> ModuleType:
    """hy3dgen's denoiser module, or skip the calling test."""
    module = load_hy3dgen_module(
        "shapegen/models/denoisers/hunyuan3ddit.py", "_hy3dgen_hunyuan3ddit"
    )
    if module is None:
        pytest.skip("hy3dgen (2.0.2) is not installed")
    return module
