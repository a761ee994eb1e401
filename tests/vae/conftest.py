"""Fixtures of the VAE tests: hy3dgen's reference autoencoder modules, imported lightly."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _load_hy3dgen_autoencoders():
    """Import hy3dgen.shapegen.models.autoencoders without running hy3dgen's heavy __init__s.

    The parent packages are replaced by empty stand-ins for the duration of the import (they
    would pull in diffusers, transformers, rembg...), then removed again so that other tests
    can still import the real hy3dgen packages.
    """
    spec = importlib.util.find_spec("hy3dgen")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("hy3dgen is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    parents = {
        "hy3dgen": root,
        "hy3dgen.shapegen": root / "shapegen",
        "hy3dgen.shapegen.models": root / "shapegen" / "models",
    }
    saved = {name: sys.modules.get(name) for name in parents}
    try:
        for name, path in parents.items():
            if saved[name] is None:
                stub = types.ModuleType(name)
                stub.__path__ = [str(path)]
                sys.modules[name] = stub
        return importlib.import_module("hy3dgen.shapegen.models.autoencoders")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def hy3dgen_ae():
    """hy3dgen's autoencoders package (ShapeVAE, VanillaVolumeDecoder, ...); skips if absent."""
    return _load_hy3dgen_autoencoders()
