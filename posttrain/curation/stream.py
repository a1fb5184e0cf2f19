"""Reading sources as streams and keeping curated rows on disk, so curation runs over files larger than memory.

A source is read one record at a time: JSONL line by line (`posttrain.data.sources.read_jsonl`), Parquet
through pyarrow record batches (`parquet_records`), JSON files and `hf:` datasets through `datasets`
(memory-mapped Arrow); built-in sets are generated in memory (they are small). Kept rows are appended to a
spool file per source with each line's byte offset; the mixture then reads the rows it chose by offset.
What stays in memory per row is the duplicate indexes' entry (16 bytes exact, ~1 KB near), an 8-byte
offset and, with a curriculum, an 8-byte difficulty.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from posttrain.config.common import DataSpec
from posttrain.data.sources import Record, file_records, numbered_records, resolve_data_path
from posttrain.errors import DataError


def parquet_records(path: Path, batch_rows: int = 4096) -> Iterator[Record]:
    """The rows of a Parquet file, read ``batch_rows`` at a time (pyarrow), as ``path row N`` records."""
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            yield f"{path} row {number}", row
            number += 1


def builtin_rows(spec: DataSpec, recipe_dir: Path, seed: int) -> list[Any]:
    """The rows of a built-in set as its own loader makes them (SFT, preference pairs or code tasks)."""
    if spec.source == "builtin:preferences":
        from posttrain.data import world
        from posttrain.data.preferences import builtin_preference_rows

        levels = tuple(spec.levels) if spec.levels else world.LEVELS
        return builtin_preference_rows(spec.split, spec.count or 2000, seed, levels, spec.negatives or "clear")
    if spec.source == "builtin:code":
        from posttrain.data.code_tasks import load_code_tasks

        tasks = load_code_tasks(spec.split if spec.split in ("train", "test") else "all", seed=seed)
        return [dict(task) for task in tasks[: spec.count or len(tasks)]]
    from posttrain.data.loading import load_dataset

    return load_dataset(spec, recipe_dir, seed).rows


def source_records(spec: DataSpec, recipe_dir: Path, seed: int) -> Iterator[Record]:
    """The records of a data spec, streamed where the format allows, at most ``spec.count`` of them.

    A record that failed to parse stops with its error (``on_bad_row: error``) or is skipped (``skip``).
    """
    if spec.source.startswith("builtin:"):
        records: Iterable[Record] = numbered_records(spec.source, builtin_rows(spec, recipe_dir, seed))
    else:
        path = resolve_data_path(spec.source, recipe_dir)
        if path is not None and path.suffix == ".parquet" and path.exists():
            records = parquet_records(path)
        else:
            records, _ = file_records(spec, recipe_dir)
    taken = 0
    for where, row in records:
        if isinstance(row, DataError):
            if spec.on_bad_row == "error":
                raise row
            continue
        yield where, row
        taken += 1
        if spec.count is not None and taken >= spec.count:
            return


class Spool:
    """Rows appended to a JSONL file, with their byte offsets, read back by row number."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("wb")
        self._offsets: list[int] = []
        self.offsets = np.zeros(0, dtype=np.int64)  # filled by `close`

    def append(self, row: Any) -> None:
        self._offsets.append(self._handle.tell())
        self._handle.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")

    def __len__(self) -> int:
        return len(self._offsets) if hasattr(self, "_offsets") else len(self.offsets)

    def close(self) -> None:
        self._handle.close()
        self.offsets = np.asarray(self._offsets, dtype=np.int64)
        del self._offsets

    def read(self, handle, number: int) -> bytes:
        handle.seek(int(self.offsets[number]))
        return handle.readline()


def write_selection(spools: list[Spool], sources: np.ndarray, numbers: np.ndarray, path: Path) -> int:
    """Writes the rows (``sources[i]``, ``numbers[i]``) in that order to ``path`` (JSONL, via a temporary file
    renamed when complete); returns the number of rows written."""
    temporary = path.with_name(path.name + ".tmp")
    handles = [spool.path.open("rb") for spool in spools]
    try:
        with temporary.open("wb") as out:
            for source, number in zip(sources.tolist(), numbers.tolist()):
                out.write(spools[source].read(handles[source], number))
    finally:
        for handle in handles:
            handle.close()
    temporary.replace(path)
    return len(sources)
