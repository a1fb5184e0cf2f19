"""posttrain.data.sources: the one row-check loop and the readers that the SFT, preference and prompt loaders
share: skip or stop on a bad row, `count`, a file that does not exist, the same errors from every loader."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import posttrain.data.sources
from posttrain.config.common import DataSpec
from posttrain.data.loading import load_dataset
from posttrain.data.preferences import load_preferences
from posttrain.data.sources import as_messages, check_rows, file_records, numbered_records
from posttrain.errors import DataError
from posttrain.rl.prompts import load_prompts


def test_doctests() -> None:
    assert doctest.testmod(posttrain.data.sources).failed == 0


def positive(row: int, where: str) -> int:
    if row <= 0:
        raise DataError(f"{where}: not positive")
    return row


def test_check_rows_skips_counts_and_stops_at_count() -> None:
    spec = DataSpec(source="x.jsonl", on_bad_row="skip", count=2)
    checked = check_rows(numbered_records("numbers", [-1, 3, 0, 4, 5]), positive, spec, "numbers", "numbers")
    assert checked.rows == [3, 4]  # 5 is never read: `count` rows passed
    assert checked.skipped == 2
    assert checked.problems == ["numbers row 0: not positive", "numbers row 2: not positive"]


def test_check_rows_stops_at_the_first_bad_row_and_reports_a_parse_error_like_a_bad_row() -> None:
    spec = DataSpec(source="x.jsonl")
    with pytest.raises(DataError, match="numbers row 1: not positive"):
        check_rows(numbered_records("numbers", [1, -2, 3]), positive, spec, "numbers", "numbers")
    records = [("f.jsonl:1", DataError("f.jsonl:1: not valid JSON"))]
    with pytest.raises(DataError, match="f.jsonl:1: not valid JSON"):
        check_rows(records, positive, spec, "f.jsonl", "numbers")
    skip = DataSpec(source="x.jsonl", on_bad_row="skip")
    with pytest.raises(DataError, match=r"^f.jsonl: no usable numbers \(1 skipped\)$"):
        check_rows(records, positive, skip, "f.jsonl", "numbers")


def test_file_records_reads_jsonl_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"a": 1}) + "\n\n{broken\n")
    records, origin = file_records(DataSpec(source="rows.jsonl"), tmp_path)
    records = list(records)
    assert origin == str(tmp_path / "rows.jsonl")
    assert records[0] == (f"{origin}:1", {"a": 1})
    assert records[1][0] == f"{origin}:3" and isinstance(records[1][1], DataError)
    with pytest.raises(DataError, match="data file not found: .*missing.jsonl"):
        file_records(DataSpec(source="missing.jsonl"), tmp_path)


def test_as_messages_checks_role_and_content_and_drops_other_keys() -> None:
    messages = [{"role": "user", "content": "hi", "name": "ann"}]
    assert as_messages(messages, "prompt", "user", "x") == [{"role": "user", "content": "hi"}]
    with pytest.raises(DataError, match=r"x: prompt\[0\] needs a `role`"):
        as_messages([{"role": "narrator", "content": "hi"}], "prompt", "user", "x")
    with pytest.raises(DataError, match="x: `prompt` must be a string or a non-empty list of messages"):
        as_messages([], "prompt", "user", "x")


@pytest.mark.parametrize(
    "loader, what", [(load_dataset, "rows"), (load_preferences, "preference pairs"), (load_prompts, "prompt rows")]
)
def test_every_loader_names_the_file_and_line_and_what_it_found_nothing_of(tmp_path: Path, loader, what: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"nothing": 1}\n{not json\n')
    with pytest.raises(DataError, match=f"{path}:1: "):
        loader(DataSpec(source="bad.jsonl"), tmp_path, 0)
    with pytest.raises(DataError, match=rf"{path}: no usable {what} \(2 skipped\)"):
        loader(DataSpec(source="bad.jsonl", on_bad_row="skip"), tmp_path, 0)
    with pytest.raises(DataError, match="data file not found"):
        loader(DataSpec(source="missing.jsonl"), tmp_path, 0)


def test_data_imports_neither_the_recipe_nor_the_pipeline_nor_rlaif() -> None:
    """Imports run recipe -> pipeline -> stages -> data; `data/` is below all three (and below `rlaif/`)."""
    import ast

    folder = Path(posttrain.data.sources.__file__).parent
    upward = ("posttrain.recipe", "posttrain.pipeline", "posttrain.rlaif", "posttrain.stages")
    found = [
        f"{path.name}: {node.module}"
        for path in sorted(folder.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(upward)
    ]
    assert found == []
