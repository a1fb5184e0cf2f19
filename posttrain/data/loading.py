"""Reading datasets named in a recipe and checking every row before training.

Rows come from the built-in world, JSONL / JSON / Parquet files (through the `datasets` library for
Parquet, JSON arrays and hub datasets) and are normalised to one of two shapes:

    {"messages": [{"role": ..., "content": ...}, ...], **extra}   # chat (SFT, evaluation)
    {"text": "...", **extra}                                        # plain text (pre-training, perplexity)

JSONL is read line by line by hand so that a malformed row is reported with its file and line number,
which `datasets` does not do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from posttrain.config.common import DataSpec
from posttrain.data import world
from posttrain.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class Dataset:
    """Rows normalised to ``messages`` or ``text``, plus how many malformed rows were skipped."""

    rows: list[dict[str, Any]]
    origin: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """A hash of the rows' content: a stage is re-run when its data changes."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()[:16]


def builtin_rows(spec: DataSpec, seed: int) -> list[dict[str, Any]]:
    """Rows of a built-in dataset (``builtin:arithmetic`` or ``builtin:corpus``)."""
    if spec.source == "builtin:arithmetic":
        levels = tuple(spec.levels) if spec.levels else world.LEVELS
        return world.arithmetic_rows(spec.split, spec.count or 2000, seed, levels)
    if spec.source == "builtin:corpus":
        return [{"text": doc} for doc in world.corpus_documents(spec.split, spec.count or 2000, seed)]
    raise DataError(f"unknown built-in dataset {spec.source!r}; built-in: builtin:arithmetic, builtin:corpus")


def _rlaif_rows(spec: DataSpec, recipe_dir: Path, seed: int) -> list[dict[str, Any]]:
    """The RLAIF demonstration rows (`posttrain.data.constitution`), with the spec's constitution if any."""
    from posttrain.data.constitution import rlaif_sft_rows
    from posttrain.recipe import resolve_data_path
    from posttrain.rlaif.constitution import load_constitution

    path = resolve_data_path(spec.constitution, recipe_dir) if spec.constitution else None
    constitution = load_constitution(path) if path is not None else None
    levels = tuple(spec.levels) if spec.levels else world.LEVELS
    return rlaif_sft_rows(spec.split, spec.count or 2000, seed, constitution, levels, spec.demonstrations)


def _read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, DataError(f"{where}: not valid JSON ({err.msg})")


def _read_with_datasets(source: str, spec: DataSpec, path: Path | None) -> Iterable[tuple[str, Any]]:
    import datasets

    if path is not None:
        builder = "parquet" if path.suffix == ".parquet" else "json"
        data = datasets.load_dataset(builder, data_files=str(path), split="train")
        origin = str(path)
    else:
        name = source.removeprefix("hf:")
        data = datasets.load_dataset(name, spec.subset, split=spec.split)
        origin = name
    for index, row in enumerate(data):
        yield f"{origin} row {index}", row


def _normalise(row: Any, where: str, layout: str) -> dict[str, Any]:
    """Checks one row against the layout and returns it as ``messages`` or ``text``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if layout == "text":
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise DataError(f"{where}: needs a non-empty string `text`")
        return row
    if layout == "prompt_completion":
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: needs a non-empty string `{key}`")
        extra = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        return {"messages": messages, **extra}
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: needs a non-empty list `messages`")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: messages[{i}] needs a `role` in {ROLES}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a string `content`")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: no non-empty assistant message to learn from")
    return row


def _layout_of(row: Any, where: str) -> str:
    if isinstance(row, dict):
        if "messages" in row:
            return "messages"
        if "prompt" in row and "completion" in row:
            return "prompt_completion"
        if "text" in row:
            return "text"
        keys = sorted(row)
    else:
        keys = []
    raise DataError(
        f"{where}: cannot tell the row layout from its keys {keys}; expected `messages`, "
        "`prompt`+`completion` or `text` (or set `format:` in the recipe)"
    )


def load_dataset(spec: DataSpec, recipe_dir: Path, seed: int) -> Dataset:
    """Loads and checks every row of a data spec (relative paths resolve against the recipe folder)."""
    from posttrain.recipe import resolve_data_path

    if spec.source == "builtin:rlaif":
        return Dataset(rows=_rlaif_rows(spec, recipe_dir, seed), origin=spec.source)
    if spec.source.startswith("builtin:"):
        rows = builtin_rows(spec, seed)
        return Dataset(rows=rows, origin=spec.source)
    path = resolve_data_path(spec.source, recipe_dir)
    if path is not None and not path.exists():
        raise DataError(f"data file not found: {path}")
    if path is not None and path.suffix == ".jsonl":
        records: Iterable[tuple[str, Any]] = _read_jsonl(path)
    else:
        records = _read_with_datasets(spec.source, spec, path)
    dataset = Dataset(rows=[], origin=str(path or spec.source))
    layout = None if spec.format == "auto" else spec.format
    for where, row in records:
        try:
            if isinstance(row, DataError):
                raise row
            layout = layout or _layout_of(row, where)
            dataset.rows.append(_normalise(row, where, layout))
        except DataError as err:
            if spec.on_bad_row == "error":
                raise
            dataset.skipped += 1
            dataset.problems.append(str(err))
        if spec.count is not None and len(dataset.rows) >= spec.count:
            break
    if not dataset.rows:
        raise DataError(f"{dataset.origin}: no usable rows ({dataset.skipped} skipped)")
    return dataset
