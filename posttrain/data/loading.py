"""Reading datasets named in a recipe and checking every row before training.

Rows come from the built-in world, JSONL / JSON / Parquet files or hub datasets (read by
`posttrain.data.sources`) and are normalised to one of two shapes:

    {"messages": [{"role": ..., "content": ...}, ...], **extra}   # chat (SFT, evaluation)
    {"text": "...", **extra}                                        # plain text (pre-training, perplexity)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec
from posttrain.data import world
from posttrain.data.calculator_world import CALCULATOR_LEVELS, calculator_rows
from posttrain.data.constitution import load_constitution
from posttrain.data.rlaif_demonstrations import rlaif_sft_rows
from posttrain.data.sources import check_messages, check_rows, file_records, resolve_data_path
from posttrain.errors import DataError


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
        return world.arithmetic_rows(spec.split, spec.count or 2000, seed, levels, spec.carry_slip or 0.0)
    if spec.source == "builtin:corpus":
        return [{"text": doc} for doc in world.corpus_documents(spec.split, spec.count or 2000, seed)]
    if spec.source == "builtin:calculator":  # tool-use demonstrations (posttrain.data.calculator_world)
        levels = tuple(spec.levels) if spec.levels else CALCULATOR_LEVELS
        return calculator_rows(spec.split, spec.count or 2000, seed, levels)
    raise DataError(
        f"unknown built-in dataset {spec.source!r}; built-in: builtin:arithmetic, builtin:calculator, builtin:corpus"
    )


def _rlaif_rows(spec: DataSpec, recipe_dir: Path, seed: int) -> list[dict[str, Any]]:
    """The RLAIF demonstration rows (`posttrain.data.rlaif_demonstrations`), with the spec's constitution if any."""
    path = resolve_data_path(spec.constitution, recipe_dir) if spec.constitution else None
    constitution = load_constitution(path) if path is not None else None
    levels = tuple(spec.levels) if spec.levels else world.LEVELS
    return rlaif_sft_rows(spec.split, spec.count or 2000, seed, constitution, levels, spec.demonstrations)


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
    check_messages(messages, "messages", where)
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
    if spec.source == "builtin:rlaif":
        return Dataset(rows=_rlaif_rows(spec, recipe_dir, seed), origin=spec.source)
    if spec.source.startswith("builtin:"):
        rows = builtin_rows(spec, seed)
        return Dataset(rows=rows, origin=spec.source)
    records, origin = file_records(spec, recipe_dir)
    layout = None if spec.format == "auto" else spec.format

    def normalise(row: Any, where: str) -> dict[str, Any]:
        nonlocal layout  # the first row that shows its layout decides it for the rest
        layout = layout or _layout_of(row, where)
        return _normalise(row, where, layout)

    checked = check_rows(records, normalise, spec, origin, "rows")
    return Dataset(rows=checked.rows, origin=origin, skipped=checked.skipped, problems=checked.problems)
