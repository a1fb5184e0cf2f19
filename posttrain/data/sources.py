"""Where a recipe's data comes from, and the loop that checks its rows: one place for every loader.

A data spec's ``source`` is ``builtin:NAME`` (generated here, `posttrain.data.world`), ``hf:ORG/NAME`` (a
hub dataset, read through the `datasets` library), ``stage:NAME/OUTPUT`` (a file an earlier stage wrote,
`posttrain.data.stage_outputs`) or a file path: JSONL, JSON or Parquet. A relative path resolves against
the recipe's folder first, then the working directory (`resolve_data_path`).

The SFT / pre-training loader (`posttrain.data.loading`), the preference loader
(`posttrain.data.preferences`) and the RL prompt loader (`posttrain.rl.prompts`) differ only in how one
row is checked; they share the readers (`file_records`) and the loop (`check_rows`): a malformed row is an
error naming its file and line (or row), or, with ``on_bad_row: skip``, skipped and counted.

JSONL is read line by line by hand so that a malformed row is reported with its file and line number,
which `datasets` does not do. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec
from posttrain.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
# message keys kept besides role and content, by role: OpenAI / TRL tool calling (chat templates render them)
MESSAGE_EXTRAS = {"assistant": ("tool_calls",), "tool": ("tool_call_id", "name")}
Messages = list[dict[str, Any]]
# one record of a source: where it is (file:line or "origin row N") and the parsed row, or the DataError
# that parsing it raised (reported, or skipped, by `check_rows` like any other bad row)
Record = tuple[str, Any]


def resolve_data_path(source: str, recipe_dir: Path) -> Path | None:
    """The file a data source names, or None for built-in, `hf:` and `stage:` sources. Relative paths are
    tried against the recipe's folder first, then the working directory."""
    if source.startswith(("builtin:", "hf:", "stage:")):
        return None
    path = Path(source).expanduser()
    if path.is_absolute():
        return path
    for base in (recipe_dir, Path.cwd()):
        if (base / path).exists():
            return base / path
    return recipe_dir / path


def read_jsonl(path: Path) -> Iterable[Record]:
    """The rows of a JSONL file with their ``file:line``; a line that is not JSON comes as a `DataError`."""
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, DataError(f"{where}: not valid JSON ({err.msg})")


def read_with_datasets(source: str, spec: DataSpec, path: Path | None) -> Iterable[Record]:
    """The rows of a Parquet or JSON file (``path``), or of the hub dataset ``hf:NAME`` (``spec.subset``,
    ``spec.split``), read through the `datasets` library."""
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


def file_records(spec: DataSpec, recipe_dir: Path) -> tuple[Iterable[Record], str]:
    """The records of a file or `hf:` source, and its origin (the resolved path, or the source itself).

    Raises:
        DataError: the file does not exist.
    """
    path = resolve_data_path(spec.source, recipe_dir)
    if path is not None and not path.exists():
        raise DataError(f"data file not found: {path}")
    if path is not None and path.suffix == ".jsonl":
        return read_jsonl(path), str(path)
    return read_with_datasets(spec.source, spec, path), str(path or spec.source)


def numbered_records(origin: str, rows: Iterable[Any]) -> Iterable[Record]:
    """Generated rows as records named ``origin row N``."""
    return ((f"{origin} row {index}", row) for index, row in enumerate(rows))


@dataclass
class CheckedRows:
    """The rows that passed a loader's check, and how many were skipped (and why)."""

    rows: list[Any]
    origin: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def check_rows(
    records: Iterable[Record], check: Callable[[Any, str], Any], spec: DataSpec, origin: str, what: str
) -> CheckedRows:
    """Checks every record with ``check(row, where)`` until ``spec.count`` rows passed.

    A row ``check`` refuses (`DataError`) stops the load (``on_bad_row: error``) or is skipped and counted
    (``on_bad_row: skip``).

    Raises:
        DataError: a bad row under ``on_bad_row: error``, or no usable row at all (``what`` names them).
    """
    checked = CheckedRows(rows=[], origin=origin)
    for where, row in records:
        try:
            if isinstance(row, DataError):
                raise row
            checked.rows.append(check(row, where))
        except DataError as err:
            if spec.on_bad_row == "error":
                raise
            checked.skipped += 1
            checked.problems.append(str(err))
        if spec.count is not None and len(checked.rows) >= spec.count:
            break
    if not checked.rows:
        raise DataError(f"{origin}: no usable {what} ({checked.skipped} skipped)")
    return checked


def check_messages(messages: list[Any], name: str, where: str) -> Messages:
    """Checks every item of ``messages`` and returns them normalised: role, string content, and the tool
    keys (`tool_calls` of an assistant turn, `tool_call_id` / `name` of a tool turn) when present.

    An assistant message that only calls tools may have no content (`null`): it becomes ``""``.
    """
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: {name}[{i}] needs a `role` in {ROLES}")
        content, calls = message.get("content"), message.get("tool_calls")
        if calls is not None and (message["role"] != "assistant" or not isinstance(calls, list)):
            raise DataError(f"{where}: {name}[{i}] `tool_calls` must be a list, on an assistant message")
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise DataError(f"{where}: {name}[{i}] needs a string `content`")
        kept = {key: message[key] for key in MESSAGE_EXTRAS.get(message["role"], ()) if message.get(key) is not None}
        out.append({"role": message["role"], "content": content, **kept})
    return out


def as_messages(value: Any, name: str, role: str, where: str) -> Messages:
    """A text field as one message of ``role``, or a checked list of messages (`check_messages`).

    >>> as_messages("What is 2 + 3?", "prompt", "user", "x")
    [{'role': 'user', 'content': 'What is 2 + 3?'}]
    """
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: `{name}` must be a string or a non-empty list of messages")
    return check_messages(value, name, where)
