"""Reading datasets named in a recipe and checking every row before training.

Rows come from the built-in world, JSONL / JSON / Parquet files or hub datasets (read by
`posttrain.data.sources`) and are normalised to one of two shapes:

    {"messages": [{"role": ..., "content": ...}, ...], **extra}   # chat (SFT, evaluation)
    {"text": "...", **extra}                                        # plain text (pre-training, perplexity)

Accepted rows, in TRL's dataset formats: `messages` (conversational language modelling; `tool` turns and
assistant `tool_calls` kept), `prompt` + `completion` as strings or as message lists (conversational
prompt-completion), `text`; for evaluation also a prompt alone (`prompt` or `question`, with `answer`).
Each row's keys decide its layout; a file mixing chat and plain-text rows is an error naming both.

String prompt/completion rows are rendered with the chat template by default (logged); TRL concatenates
them as they are, which `render: raw` does (the row keeps its texts under `raw_text`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec
from posttrain.data import world
from posttrain.data.calculator_world import CALCULATOR_LEVELS, calculator_rows
from posttrain.data.constitution import load_constitution
from posttrain.data.rlaif_demonstrations import rlaif_sft_rows
from posttrain.data.sources import as_messages, check_messages, check_rows, file_records, resolve_data_path
from posttrain.errors import DataError

logger = logging.getLogger(__name__)
# where a `render: raw` row keeps its prompt and completion texts, for plain concatenation
RAW_TEXT = "raw_text"


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
        return calculator_rows(spec.split, spec.count or 2000, seed, levels, tool_share=spec.tool_share or 1.0)
    raise DataError(
        f"unknown built-in dataset {spec.source!r}; built-in: builtin:arithmetic, builtin:calculator, builtin:corpus"
    )


def _rlaif_rows(spec: DataSpec, recipe_dir: Path, seed: int) -> list[dict[str, Any]]:
    """The RLAIF demonstration rows (`posttrain.data.rlaif_demonstrations`), with the spec's constitution if any."""
    path = resolve_data_path(spec.constitution, recipe_dir) if spec.constitution else None
    constitution = load_constitution(path) if path is not None else None
    levels = tuple(spec.levels) if spec.levels else world.LEVELS
    return rlaif_sft_rows(spec.split, spec.count or 2000, seed, constitution, levels, spec.demonstrations)


def _has_answer(messages: list[dict[str, Any]]) -> bool:
    """Whether an assistant turn says or does something (text, or a tool call) to learn from."""
    return any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages)


def _prompt_completion(row: dict[str, Any], where: str, render: str) -> dict[str, Any]:
    """A `prompt`/`completion` row (strings, or TRL's conversational message lists) as chat ``messages``;
    with ``render: raw`` string rows also keep their texts under `raw_text` for plain concatenation."""
    for key in ("prompt", "completion"):
        value = row.get(key)
        if isinstance(value, str) and not value.strip() or value is None or value == []:
            raise DataError(f"{where}: needs a non-empty string `{key}` (or a list of messages)")
    prompt = as_messages(row["prompt"], "prompt", "user", where)
    completion = as_messages(row["completion"], "completion", "assistant", where)
    if not _has_answer(completion):
        raise DataError(f"{where}: `completion` has no non-empty assistant message to learn from")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    out = {"messages": prompt + completion, **extra}
    if render == "raw":
        if not (isinstance(row["prompt"], str) and isinstance(row["completion"], str)):
            raise DataError(f"{where}: `render: raw` concatenates string prompts and completions; this row has messages")
        out[RAW_TEXT] = {"prompt": row["prompt"], "completion": row["completion"]}
    return out


def _normalise(row: Any, where: str, layout: str, purpose: str, render: str) -> dict[str, Any]:
    """Checks one row against the layout and returns it as ``messages`` or ``text``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if layout == "text":
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise DataError(f"{where}: needs a non-empty string `text`")
        return row
    if layout == "prompt_completion":
        return _prompt_completion(row, where, render)
    if layout == "prompt":  # an evaluation prompt: no answer to learn from is needed
        key = "prompt" if "prompt" in row else "question"
        value = row[key]
        if isinstance(value, str) and not value.strip():
            raise DataError(f"{where}: `{key}` must be a non-empty string")
        messages = as_messages(value, key, "user", where)
        if render == "raw" and isinstance(value, str):
            return {"messages": messages, **{k: v for k, v in row.items() if k != key}, RAW_TEXT: {"prompt": value}}
        return {"messages": messages, **{k: v for k, v in row.items() if k != key}}
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: needs a non-empty list `messages`")
    messages = check_messages(messages, "messages", where)
    if purpose == "train" and not _has_answer(messages):
        raise DataError(f"{where}: no non-empty assistant message to learn from")
    return {**row, "messages": messages}


def _layout_of(row: Any, where: str, purpose: str) -> str:
    """The layout one row's keys show (`messages` > `prompt`+`completion` > `text`; for evaluation also a
    prompt alone: `prompt` or `question`, as RL prompt files have them)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        return "messages"
    if "prompt" in row and ("completion" in row or (purpose == "train" and "text" not in row)):
        return "prompt_completion"
    if "text" in row:
        return "text"
    if purpose == "evaluate" and ("prompt" in row or "question" in row):
        return "prompt"
    keys = sorted(row)
    expected = "`messages`, `prompt`+`completion` or `text`" + (", `prompt` or `question`" if purpose == "evaluate" else "")
    raise DataError(
        f"{where}: cannot tell the row layout from its keys {keys}; expected {expected} (or set `format:` in the recipe)"
    )


def load_dataset(spec: DataSpec, recipe_dir: Path, seed: int, purpose: str = "train") -> Dataset:
    """Loads and checks every row of a data spec (relative paths resolve against the recipe folder).

    ``purpose="evaluate"`` also takes prompts without an answer to learn from: chat rows without an
    assistant turn, and `prompt` or `question` rows (an RL prompt file works as an evaluation set).
    """
    if spec.source == "builtin:rlaif":
        return Dataset(rows=_rlaif_rows(spec, recipe_dir, seed), origin=spec.source)
    if spec.source.startswith("builtin:"):
        rows = builtin_rows(spec, seed)
        return Dataset(rows=rows, origin=spec.source)
    records, origin = file_records(spec, recipe_dir)
    first_of: dict[str, str] = {}  # each row kind (chat / text) and the first row that has it
    counts: Counter[str] = Counter()

    def normalise(row: Any, where: str) -> dict[str, Any]:
        # each row's own keys decide its layout, not the first row's (unless `format:` fixes it)
        layout = _layout_of(row, where, purpose) if spec.format == "auto" else spec.format
        normalised = _normalise(row, where, layout, purpose, spec.render)
        kind = "text" if layout == "text" else "chat"
        first_of.setdefault(kind, where)
        counts[layout] += 1
        return normalised

    checked = check_rows(records, normalise, spec, origin, "rows")
    if len(first_of) > 1:
        raise DataError(
            f"{origin}: rows mix chat and plain-text layouts ({', '.join(f'{n} `{k}`' for k, n in sorted(counts.items()))}; "
            f"first chat row {first_of['chat']}, first text row {first_of['text']}); split the file or set `format:`"
        )
    if counts["prompt_completion"] and spec.render == "auto":
        logger.info(
            "%s: prompt/completion rows are rendered with the chat template (`render: chat_template`, the default); "
            "TRL concatenates string prompts and completions as they are: `render: raw` does that", origin,
        )
    return Dataset(rows=checked.rows, origin=origin, skipped=checked.skipped, problems=checked.problems)
