"""Atomic file writing: nothing is ever half-written.

Every writer goes to a temporary file in the destination folder, flushes it, then renames it
over the destination (``os.replace`` is atomic on POSIX and Windows). A crash leaves either
the old file or the new one, plus at worst a stray ``.<name>.<pid>-<host>.<random>.tmp`` that
readers ignore and ``clean_stale_tmp`` removes on the next run (only when the process that made
it, on this machine, is gone: a live writer's file is never touched).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TMP_NAME = re.compile(r"\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp$")
LEGACY_TMP_AGE_S = 3600.0  # temporary files without an owner tag are stale after this long


def tmp_prefix(name: str) -> str:
    """Prefix of a temporary sibling of ``name``: it records the writing process and machine."""
    return f".{name}.{os.getpid()}-{_HOST}."


def make_tmp_dir(parent: Path, name: str) -> Path:
    """A temporary folder in ``parent`` for assembling ``name`` (renamed into place when complete),
    with the usual permissions (``mkdtemp`` alone makes it 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=tmp_prefix(name), suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def _owner_gone(match: re.Match) -> bool:
    if match["host"] != _HOST:
        return False  # another machine's writer: it may still be running
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def clean_stale_tmp(*folders: str | Path) -> int:
    """Remove the temporary files and folders a killed writer left in ``folders`` (not
    recursive); returns how many went. Missing folders are skipped."""
    removed = 0
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.tmp"):
            match = _TMP_NAME.search(path.name)
            try:
                # a name without the owner tag was written by an older version: judge by age
                stale = (_owner_gone(match) if match is not None
                         else time.time() - path.lstat().st_mtime > LEGACY_TMP_AGE_S)
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
            if not stale:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on clean exit it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(path.name), suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_npz(path: str | Path, compress: bool | Collection[str] = False, **arrays: np.ndarray) -> None:
    """.npz written atomically. Members are stored (fast to read back) unless ``compress`` is
    True (all) or names them; compressed members are deflated at level 1, most of the gain of
    ``np.savez_compressed`` at a fraction of its time. ``np.load`` reads both alike."""
    deflate = set(arrays) if compress is True else set(compress or ())
    with atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w", compresslevel=1) as archive:
        for name, array in arrays.items():
            # ZipFile.open(name, "w") takes the archive's current method for each new member
            archive.compression = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_png(path: str | Path, image) -> None:
    """Save a PIL image or a (H, W[, C]) uint8 array as PNG, atomically."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> str:
    """torch tensors -> .safetensors, atomically (contiguous CPU copies are made); returns the
    file's SHA-256 (hex), for callers that record it."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save(tensors, metadata=metadata)
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class CorruptFileError(ValueError):
    """A data file exists but cannot be read (truncated, damaged, not what its name says);
    the message names the file and what is wrong."""


def _unreadable(path: Path, error: Exception) -> CorruptFileError:
    return CorruptFileError(f"{path}: unreadable ({type(error).__name__}: {error})")


def read_npz(path: str | Path, keys: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (only ``keys`` when given, each required), read completely.

    Raises:
        FileNotFoundError: no such file. CorruptFileError: truncated, damaged or missing a key.
    """
    path = Path(path)
    try:
        with np.load(path) as data:
            names = data.files
            arrays = {k: data[k] for k in (keys if keys is not None else names) if k in names}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as error:
        raise _unreadable(path, error) from error
    missing = [k for k in keys or () if k not in arrays]
    if missing:
        raise CorruptFileError(f"{path}: no array {missing[0]!r} (has {', '.join(names)})")
    return arrays


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """An image file as an (H, W, C) uint8 array in ``mode``, read completely.

    Raises:
        FileNotFoundError: no such file. CorruptFileError: truncated or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise _unreadable(path, error) from error


def read_safetensors(path: str | Path) -> dict:
    """The torch tensors of a .safetensors file.

    Raises:
        FileNotFoundError: no such file. CorruptFileError: truncated or not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from error
