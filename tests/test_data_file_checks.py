"""`posttrain validate` reads local JSONL data with each stage's loader: bad rows are found before a run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from posttrain.cli import main

RECIPE = """\
name: data_check
model: {{name_or_path: "builtin:micro"}}
output_dir: {folder}/run
stages:
  - name: sft
    kind: sft
    data: {{source: sft.jsonl}}
    train: {{steps: 1, batch_size: 2, seq_len: 16}}
  - name: dpo
    kind: dpo
    data: {{source: pairs.jsonl}}
    train: {{steps: 1, batch_size: 2, seq_len: 16}}
  - name: grpo
    kind: grpo
    data: {{source: prompts.jsonl}}
    reward:
      - source: math
    train: {{steps: 1, prompts_per_step: 2}}
"""
GOOD = {
    "sft.jsonl": [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}],
    "pairs.jsonl": [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}],
    "prompts.jsonl": [{"question": "1+1=", "answer": "2"}],
}


def _write(folder: Path, files: dict[str, list]) -> Path:
    for name, rows in files.items():
        (folder / name).write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(folder=folder))
    return recipe


def test_good_files_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(_write(tmp_path, GOOD))]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("file", "rows", "message"),
    [
        ("sft.jsonl", ['{"prompt": "1+1=", "completion": "2"}', "{not json"], r"\(sft\)\.data: .*sft.jsonl:2: not valid JSON"),
        ("sft.jsonl", [{"prompt": "1+1="}], r"\(sft\)\.data: .*sft.jsonl:1: needs a non-empty string `completion`"),
        ("sft.jsonl", [{"reply": "2"}], r"\(sft\)\.data: .*sft.jsonl:1: cannot tell the row layout"),
        (
            "sft.jsonl", [{"prompt": "1+1=", "completion": "2"}, {"text": "x"}],
            r"rows mix chat and plain-text layouts \(1 `prompt_completion`, 1 `text`; .*first text row .*sft.jsonl:2\)",
        ),
        ("pairs.jsonl", [{"prompt": "1+1=", "chosen": "2"}], r"\(dpo\)\.data: .*pairs.jsonl:1: .*rejected"),
        ("prompts.jsonl", [{"answer": "2"}], r"\(grpo\)\.data: .*prompts.jsonl:1"),
        (
            "prompts.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "solution": "4"}],
            r"\(grpo\)\.data: .*prompts.jsonl: 1 of 2 rows have no `answer` field, which the `math` reward reads \(first: row 2\)",
        ),
    ],
)
def test_bad_rows_are_reported_by_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, rows: list, message: str
) -> None:
    recipe = _write(tmp_path, {**GOOD, file: rows})
    assert main(["validate", str(recipe)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_evaluation_files_are_read_as_the_evaluator_reads_them(tmp_path: Path, capsys) -> None:
    """An RL prompt file works as an exact_match set; one without `answer` is named at validate."""
    recipe = _write(tmp_path, GOOD)
    text = recipe.read_text() + "evaluations:\n  - {name: qa, kind: exact_match, data: {source: prompts.jsonl}}\n"
    recipe.write_text(text)
    assert main(["validate", str(recipe)]) == 0
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"question": "1+1="}) + "\n")
    recipe.write_text(text.replace("    reward:\n      - source: math\n", "    reward:\n      - source: format\n"
                                   "        args: {pattern: x}\n"))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"evaluations\[0\] \(qa\)\.data: .*prompts.jsonl: 1 of 1 rows have no `answer` field, which "
                     r"exact_match scores against \(first: row 1\)", err)
