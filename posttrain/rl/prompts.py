"""Prompts for RL stages: the conversation the policy continues, and the fields its reward sources read.

Accepted rows (JSONL / JSON / Parquet files, `hf:` datasets, or built-in sets):

    {"question": "What is 2 + 3?", "answer": "5"}                        # question/answer columns
    {"prompt": "Write f(x) ...", "tests": "def check(candidate): ...", "entry_point": "f"}
    {"prompt": [{"role": "system", ...}, {"role": "user", ...}], ...}  # prompt as messages
    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "answer": "5"}  # SFT-style chat

With the data spec's ``render: raw``, a string `prompt` / `question` is what the policy continues as it is
(tokenised with the tokenizer's own special tokens, e.g. bos, as SFT tokenises raw prompts), for a base model
trained on plain prompt-completion text; `messages` rows and message-list prompts always go through the chat
template. A trailing assistant turn of `messages` (the SFT answer) is dropped: the policy writes its own. Every
column other than the prompt itself is passed to the reward sources as the example's fields (`answer`
for the math verifier, `tests` and `entry_point` for the code verifier, ...).

Built-in sets: `builtin:arithmetic` (the tiny world's problems, with `answer` and `level`) and
`builtin:code` (`posttrain.data.code_tasks`, with `tests` and `entry_point`), and `builtin:calculator`
(`posttrain.data.calculator_world`: the problems an environment with a calculator tool poses).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec
from posttrain.data.calculator_world import CALCULATOR_LEVELS, calculator_rows
from posttrain.data.code_tasks import load_code_tasks
from posttrain.data.loading import builtin_rows
from posttrain.data.sources import Record, as_messages, check_rows, file_records, numbered_records
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
        text: ``render: raw``: the prompt text the policy continues as it is; None: the chat template renders
            ``messages``.
    """

    messages: list[dict[str, str]]
    question: str
    example: dict[str, Any]
    text: str | None = None


@dataclass
class PromptData:
    """Checked prompt rows of one data spec, and how many malformed rows were skipped (and why)."""

    rows: list[PromptRow]
    origin: str
    skipped: int = 0
    problems: list[str] | None = None


def prompt_row(row: Any, where: str, raw: bool = False) -> PromptRow:
    """Checks one raw row and splits it into prompt and example fields (``raw``: the data spec's ``render:
    raw``, which keeps a string prompt's text as it is).

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
    messages = as_messages(row[key], key, "user", where)
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise DataError(f"{where}: the prompt has no user message to answer")
    example = {k: v for k, v in row.items() if k != key}
    text = row[key] if raw and key != "messages" and isinstance(row[key], str) else None
    return PromptRow(messages=messages, question=users[-1], example=example, text=text)


def _builtin_records(spec: DataSpec, seed: int) -> Iterable[Record]:
    if spec.source == BUILTIN_CODE:
        split = spec.split if spec.split in ("train", "test") else "all"
        tasks = load_code_tasks(split, seed=seed)
        rows: list[dict[str, Any]] = [dict(task) for task in tasks[: spec.count or len(tasks)]]
    elif spec.source == "builtin:arithmetic":
        rows = builtin_rows(spec, seed)
    elif spec.source == "builtin:calculator":  # the problems only: the environment answers the tool calls
        levels = tuple(spec.levels) if spec.levels else CALCULATOR_LEVELS
        rows = calculator_rows(spec.split, spec.count or 2000, seed, levels, demonstrations=False)
    else:
        raise DataError(
            f"{spec.source!r} holds no prompts; RL stages read builtin:arithmetic, builtin:calculator or {BUILTIN_CODE}"
        )
    return numbered_records(spec.source, rows)


def load_prompts(spec: DataSpec, recipe_dir: Path, seed: int) -> PromptData:
    """Reads and checks every prompt row of a data spec (relative paths resolve against the recipe folder)."""
    if spec.source.startswith("builtin:"):
        records, origin = _builtin_records(spec, seed), spec.source
    else:
        records, origin = file_records(spec, recipe_dir)
    raw = spec.render == "raw"
    checked = check_rows(records, lambda row, where: prompt_row(row, where, raw), spec, origin, "prompt rows")
    return PromptData(rows=checked.rows, origin=origin, skipped=checked.skipped, problems=checked.problems)


def encode_prompts(tokenizer: Any, rows: list[PromptRow], max_tokens: int) -> tuple[list[PromptRow], list[list[int]], int]:
    """Renders each prompt with the chat template (ending where the assistant's answer starts) and
    tokenises it (a ``render: raw`` row: its text, with the tokenizer's special tokens); returns the rows kept,
    their token ids, and how many were longer than ``max_tokens``."""
    from posttrain.data.packing import ChatRenderer, render_prompt

    encoded: list[Any] = [None] * len(rows)
    chat = [i for i, row in enumerate(rows) if row.text is None]
    if chat:  # a tokenizer without a chat template is fine for raw prompts only
        renderer = ChatRenderer(tokenizer)
        texts = [render_prompt(tokenizer, rows[i].messages, renderer) for i in chat]
        for i, ids in zip(chat, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            encoded[i] = ids
    raw = [i for i, row in enumerate(rows) if row.text is not None]
    if raw:
        for i, ids in zip(raw, tokenizer([rows[i].text for i in raw])["input_ids"]):
            encoded[i] = ids
    kept = [(row, list(ids)) for row, ids in zip(rows, encoded) if 0 < len(ids) <= max_tokens]
    return [row for row, _ in kept], [ids for _, ids in kept], len(rows) - len(kept)
