"""Json reading with errors that name the file, and atomic writes: an interrupted run never
leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

# mkstemp creates files readable by the owner only; outputs get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once fully written: a temporary file beside
    it is fsynced and renamed over it; on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """Serialise ``obj`` as json and write it atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode("utf-8"))


def read_json(path: str | Path, what: str = "json file", *, expect_object: bool = True) -> Any:
    """Read a json file; a missing, malformed or (with ``expect_object``) non-object file
    raises an error naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid json: {e}") from e
    if expect_object and not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a json object, got {type(data).__name__}")
    return data
