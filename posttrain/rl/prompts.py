"""Prompts for RL stages: the conversation the policy continues, and the fields its reward sources read.

Accepted rows (JSONL / JSON / Parquet files, `hf:` datasets, or built-in sets):

    {"question": "What is 2 + 3?", "answer": "5"}                        # question/answer columns
    {"prompt": "Write f(x) ...", "tests": "def check(candidate): ...", "entry_point": "f"}
    {"prompt": [{"role": "system", ...}, {"role": "user", ...}], ...}  # prompt as messages
    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "answer": "5"}  # SFT-style chat

A trailing assistant turn of `messages` (the SFT answer) is dropped: the policy writes its own. Every
column other than the prompt itself is passed to the reward sources as the example's fields (`answer`
for the math verifier, `tests` and `entry_point` for the code verifier, ...).

Built-in sets: `builtin:arithmetic` (the tiny world's problems, with `answer` and `level`) and
`builtin:code` (`posttrain.data.code_tasks`, with `tests` and `entry_point`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from posttrain.config.common import DataSpec
from posttrain.data.code_tasks import load_code_tasks
from posttrain.data.loading import _read_jsonl, _read_with_datasets, builtin_rows
from posttrain.data.preferences import _messages
from posttrain.errors import DataError

BUILTIN_CODE = "builtin:code"
_PROMPT_KEYS = ("messages", "prompt", "question")


@dataclass(frozen=True)
class PromptRow:
    """One RL prompt.

    Attributes:
        messages: The conversation the policy continues (ends with a user or system turn).
        question: The text handed to reward sources as the prompt: the last user message.
        example: The row's other fields, for the reward sources.
    """

    messages: list[dict[str, str]]
    question: str
    example: dict[str, Any]


@dataclass
class PromptData:
    """Checked prompt rows of one data spec, and how many malformed rows were skipped (and why)."""

    rows: list[PromptRow]
    origin: str
    skipped: int = 0
    problems: list[str] | None = None


def prompt_row(row: Any, where: str) -> PromptRow:
    """Checks one raw row and splits it into prompt and example fields.

    >>> prompt_row({"question": "What is 2 + 3?", "answer": "5"}, "x").example
    {'answer': '5'}
    >>> prompt_row({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, "x").messages
    [{'role': 'user', 'content': 'Hi'}]
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    key = next((k for k in _PROMPT_KEYS if k in row), None)
    if key is None:
        raise DataError(
            f"{where}: an RL prompt row needs `question`, `prompt` or `messages`; it has {sorted(row) or 'no keys'}"
        )
    if key == "question" and not (isinstance(row[key], str) and row[key].strip()):
        raise DataError(f"{where}: `question` must be a non-empty string")
    messages = _messages(row[key], key, "user", where)
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise DataError(f"{where}: the prompt has no user message to answer")
    example = {k: v for k, v in row.items() if k != key}
    return PromptRow(messages=messages, question=users[-1], example=example)


def _builtin_records(spec: DataSpec, seed: int) -> Iterable[tuple[str, Any]]:
    if spec.source == BUILTIN_CODE:
        split = spec.split if spec.split in ("train", "test") else "all"
        tasks = load_code_tasks(split, seed=seed)
        rows: list[dict[str, Any]] = [dict(task) for task in tasks[: spec.count or len(tasks)]]
    elif spec.source == "builtin:arithmetic":
        rows = builtin_rows(spec, seed)
    else:
        raise DataError(f"{spec.source!r} holds no prompts; RL stages read builtin:arithmetic or {BUILTIN_CODE}")
    return ((f"{spec.source} row {index}", row) for index, row in enumerate(rows))


def load_prompts(spec: DataSpec, recipe_dir: Path, seed: int) -> PromptData:
    """Reads and checks every prompt row of a data spec (relative paths resolve against the recipe folder)."""
    from posttrain.recipe import resolve_data_path

    if spec.source.startswith("builtin:"):
        records, origin = _builtin_records(spec, seed), spec.source
    else:
        path = resolve_data_path(spec.source, recipe_dir)
        if path is not None and not path.exists():
            raise DataError(f"data file not found: {path}")
        origin = str(path or spec.source)
        records = _read_jsonl(path) if path is not None and path.suffix == ".jsonl" else _read_with_datasets(spec.source, spec, path)
    data = PromptData(rows=[], origin=origin, problems=[])
    for where, row in records:
        try:
            if isinstance(row, DataError):
                raise row
            data.rows.append(prompt_row(row, where))
        except DataError as err:
            if spec.on_bad_row == "error":
                raise
            data.skipped += 1
            data.problems.append(str(err))  # type: ignore[union-attr]
        if spec.count is not None and len(data.rows) >= spec.count:
            break
    if not data.rows:
        raise DataError(f"{origin}: no usable prompt rows ({data.skipped} skipped)")
    return data


def encode_prompts(tokenizer: Any, rows: list[PromptRow], max_tokens: int) -> tuple[list[PromptRow], list[list[int]], int]:
    """Renders each prompt with the chat template (ending where the assistant's answer starts) and
    tokenises it; returns the rows kept, their token ids, and how many were longer than ``max_tokens``."""
    from posttrain.data.packing import ChatRenderer, render_prompt

    renderer = ChatRenderer(tokenizer)
    texts = [render_prompt(tokenizer, row.messages, renderer) for row in rows]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    kept = [(row, list(ids)) for row, ids in zip(rows, encoded) if 0 < len(ids) <= max_tokens]
    return [row for row, _ in kept], [ids for _, ids in kept], len(rows) - len(kept)
