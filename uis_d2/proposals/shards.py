"""Append-only shard files that make proposal generation resumable and world-size independent.

Layout, next to the output json ``OUT.json``::

    OUT.json.shards/manifest.json   what produced the shards (dataset, config, generator, date)
    OUT.json.shards/rank{r}.jsonl   one line per finished image, appended by process r

Lines are keyed by image id, not by rank: a rerun with any number of processes reads every shard
file, skips the images already there, and the merge (writer.py) orders everything by image id.
Each line is written whole and the file is fsynced once per batch, so a crash loses at most the
batch in flight plus, possibly, one torn last line. ``repair`` cuts such a line off before a
process appends again, and readers ignore an unterminated last line of a file being written.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import yaml

from uis_d2.utils.files import atomic_write_json

MANIFEST_NAME = "manifest.json"
# Manifest fields that must match for shards to be reused; "created" is carried over instead.
MANIFEST_IDENTITY_KEYS = ("dataset", "config", "generator")
# Every shard line starts with this, so finding finished images never parses whole lines.
_LINE_PREFIX = re.compile(rb'^\{"image_id":(-?\d+),')


class ShardMismatchError(RuntimeError):
    """Existing shards were produced by a different dataset, config or generator."""


def shard_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def encode_line(line: dict[str, Any]) -> bytes:
    """Compact json with ``image_id`` first (the reader relies on it), newline-terminated."""
    if next(iter(line), None) != "image_id":
        raise ValueError(f"a shard line must start with image_id, got keys {list(line)[:3]}")
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


class ShardDirectory:
    """The shard folder of one output json."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def rank_file(self, rank: int) -> Path:
        return self.path / f"rank{rank}.jsonl"

    def sync_manifest(self, manifest: dict[str, Any], create: bool) -> dict[str, Any]:
        """Return the stored manifest, creating it when ``create`` (rank 0) and none exists.

        Raises ShardMismatchError when the stored one differs in what produced the shards, so a
        resumed run never mixes proposals of two configurations.
        """
        path = self.path / MANIFEST_NAME
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"shard manifest {path} is missing (rank 0 writes it)")
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, manifest, indent=1)
            return manifest
        stored = json.loads(path.read_text(encoding="utf-8"))
        for key in MANIFEST_IDENTITY_KEYS:
            if stored.get(key) != manifest.get(key):
                raise ShardMismatchError(
                    f"{self.path} holds proposals made with a different {key!r}; resume with the "
                    f"same settings, or delete that folder to start over. Differences (stored -> "
                    f"now):\n{_describe_difference(stored.get(key), manifest.get(key))}"
                )
        return stored

    def repair(self, rank: int) -> None:
        """Cut a torn last line off this rank's file before appending to it."""
        path = self.rank_file(rank)
        if not path.exists():
            return
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            keep = _end_of_last_line(f, size)
            if keep < size:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def index(self) -> dict[int, tuple[Path, int]]:
        """image id -> (shard file, byte offset) of its first complete line."""
        found: dict[int, tuple[Path, int]] = {}
        for path in sorted(self.path.glob("rank*.jsonl")):
            offset = 0
            with open(path, "rb") as f:
                for raw in f:
                    if raw.endswith(b"\n"):
                        match = _LINE_PREFIX.match(raw)
                        if match is None:
                            raise ValueError(f"{path}: malformed shard line at byte {offset}")
                        found.setdefault(int(match.group(1)), (path, offset))
                    offset += len(raw)
        return found

    def open_writer(self, rank: int) -> ShardWriter:
        self.path.mkdir(parents=True, exist_ok=True)
        return ShardWriter(open(self.rank_file(rank), "ab"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ShardReader:
    """Reads lines at known offsets, keeping each shard file open (a merge reads every line)."""

    def __init__(self) -> None:
        self._files: dict[Path, BinaryIO] = {}

    def read(self, path: Path, offset: int) -> dict[str, Any]:
        if path not in self._files:
            self._files[path] = open(path, "rb")  # closed in close()
        f = self._files[path]
        f.seek(offset)
        return orjson.loads(f.readline())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardWriter:
    """Appends whole lines and makes each batch durable before the next one starts."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write_batch(self, lines: Iterable[dict[str, Any]]) -> None:
        self._file.write(b"".join(encode_line(line) for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_of_last_line(f: BinaryIO, size: int, chunk: int = 1 << 16) -> int:
    """Byte offset just after the file's last newline (0 if none), reading from the end."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _describe_difference(stored: Any, now: Any, max_lines: int = 12) -> str:
    """Changed leaves as ``- KEY.PATH: old`` / ``+ KEY.PATH: new`` lines (yaml configs too)."""
    diff = [
        line
        for line in difflib.unified_diff(_leaves(stored), _leaves(now), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("---", "+++"))
    ]
    return "\n".join(diff[:max_lines]) or f"{stored!r} -> {now!r}"


def _leaves(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, str) and "\n" in value:  # a yaml config dump
        value = yaml.safe_load(value)
    if isinstance(value, dict):
        return [
            leaf
            for key in sorted(value)
            for leaf in _leaves(value[key], f"{prefix}.{key}" if prefix else str(key))
        ]
    return [f"{prefix}: {value!r}"]
