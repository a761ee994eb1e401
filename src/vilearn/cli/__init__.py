"""The ``vilearn`` command line: thin typer commands that parse, validate and call the library.

Each group of commands lives in its own module and registers itself on ``app`` when imported
here; heavy imports (torch, trimesh) happen inside the commands so ``vilearn --help`` is fast.
"""

from vilearn.cli import bench as _bench  # noqa: F401  (bench convergence)
from vilearn.cli import data as _data  # noqa: F401  (prepare, inspect, merge-shards)
from vilearn.cli import demo as _demo  # noqa: F401  (demo)
from vilearn.cli import evaluate as _evaluate  # noqa: F401  (evaluate)
from vilearn.cli import features as _features  # noqa: F401  (cache-features, cache-images)
from vilearn.cli import grouping as _grouping  # noqa: F401  (group, show-groups)
from vilearn.cli import train as _train  # noqa: F401  (train, generate, export)
from vilearn.cli import vae as _vae  # noqa: F401  (train-vae, encode, decode)
from vilearn.cli.app import app

__all__ = ["app"]
