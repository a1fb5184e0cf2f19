"""posttrain.files: atomic writes leave the old file or the new one, never a torn or temporary one; hashes."""

from __future__ import annotations

import doctest
import hashlib
import json
from pathlib import Path

import pytest

import posttrain.files
from posttrain.files import (
    atomic_open, file_sha256, json_hash, read_json, text_hash, write_json_atomic, write_lines_atomic,
    write_text_atomic,
)


def test_doctests() -> None:
    assert doctest.testmod(posttrain.files).failed == 0


def test_atomic_writes_replace_the_file_and_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json_atomic(path, {"b": 1, "a": Path("x")})
    assert json.loads(path.read_text()) == {"b": 1, "a": "x"}  # default=str writes a path as its text
    assert path.read_text() == json.dumps({"b": 1, "a": "x"}, indent=2)
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    write_lines_atomic(tmp_path / "rows.jsonl", (f"{i}\n" for i in range(3)))
    assert (tmp_path / "rows.jsonl").read_text() == "0\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "rows.jsonl"]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"step": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"step": object()}, default=None)  # refused half-way through the dump
    assert json.loads(path.read_text()) == {"step": 1}
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write('{"step": 2')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_read_json_is_none_for_missing_or_broken_files(tmp_path: Path) -> None:
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"a": ')
    assert read_json(tmp_path / "torn.json") is None
    (tmp_path / "good.json").write_text('[1, 2]')
    assert read_json(tmp_path / "good.json") == [1, 2]


def test_hashes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # more than one 1 MiB block
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert text_hash("abc") == hashlib.sha256(b"abc").hexdigest()[:16]
    assert json_hash({"b": [1], "a": None}) == text_hash('{"a": null, "b": [1]}')
    assert json_hash([Path("p")]) == json_hash(["p"])


def test_fsync_helpers_accept_files_and_folders(tmp_path: Path) -> None:
    from posttrain.files import fsync_dir, fsync_file, fsync_tree

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"x")
    fsync_file(tmp_path / "sub" / "a.bin")
    fsync_dir(tmp_path / "sub")
    fsync_tree(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_file(tmp_path / "missing")
