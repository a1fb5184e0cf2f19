"""Writing files so that no reader ever sees half of one, and hashing files and JSON values.

Every file a later run or another process reads (manifests, the evaluation table, stage outputs, sample
generations, training-state records) is written through `atomic_open`: into ``NAME.tmp-<pid>`` beside the
target, flushed to disk, then renamed over it. A rename within one folder is atomic on POSIX, so a process
killed mid-write leaves the previous file (or none), never a torn one; the pid keeps several processes
that write the same file from sharing a temporary name.

Hashes: `file_sha256` (whole files, streamed in 1 MiB blocks), `json_hash` and `text_hash` (16 hex digits,
for fingerprints and cache keys). Plain Python, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

BLOCK_SIZE = 1 << 20
SHORT_HASH_LENGTH = 16


def temporary_path(path: Path) -> Path:
    """The name a file is written under before it is renamed to ``path``."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file that replaces ``path`` once the block finishes (flushed and synced first).

    On an error inside the block the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    temp = temporary_path(path)
    try:
        with temp.open(mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any, *, indent: int = 2, default: Callable[[Any], Any] | None = str) -> None:
    """Writes ``obj`` as JSON atomically; ``default=str`` writes values JSON has no type for as text,
    ``default=None`` refuses them (`TypeError`)."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=indent, default=default)


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    """Writes ``lines`` (each ending with its own newline) atomically, one at a time."""
    with atomic_open(path) as handle:
        for line in lines:
            handle.write(line)


def read_json(path: Path) -> Any:
    """The JSON content of ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fsync_file(path: Path) -> None:
    """Flushes a written file's data to disk."""
    with Path(path).open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Flushes a folder's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flushes every file under ``folder``, then the folder itself, to disk (before it is renamed into place)."""
    for file in folder.rglob("*"):
        if file.is_file():
            fsync_file(file)
    fsync_dir(folder)


def update_digest(digest: Any, path: Path) -> None:
    """Feeds the bytes of ``path`` into a `hashlib` digest, a block at a time (checkpoints are large)."""
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (64 hex digits)."""
    digest = hashlib.sha256()
    update_digest(digest, path)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    """A short SHA-256 of ``text`` (16 hex digits).

    >>> text_hash("abc")
    'ba7816bf8f01cfea'
    """
    return hashlib.sha256(text.encode()).hexdigest()[:SHORT_HASH_LENGTH]


def json_hash(obj: Any) -> str:
    """A short SHA-256 of ``obj`` as JSON with sorted keys (16 hex digits); values JSON has no type for
    count as their text.

    >>> json_hash({"b": 1, "a": [1, 2]}) == json_hash({"a": [1, 2], "b": 1})
    True
    """
    return text_hash(json.dumps(obj, sort_keys=True, default=str))
