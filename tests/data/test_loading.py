"""Reading data files: row layouts, errors naming file and line, skipping bad rows, Parquet, `count`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config.common import DataSpec
from posttrain.data.loading import load_dataset
from posttrain.errors import DataError

CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "answer": "4"}
PAIR = {"prompt": "3+3?", "completion": "6", "answer": "6"}
TEXT = {"text": "The sun is warm."}


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def load(path: Path, **spec) -> object:
    return load_dataset(DataSpec(source=path.name, **spec), path.parent, seed=0)


def test_messages_rows(tmp_path: Path) -> None:
    data = load(write_lines(tmp_path / "chat.jsonl", [CHAT, CHAT]))
    assert data.rows == [CHAT, CHAT] and data.skipped == 0
    assert data.origin == str(tmp_path / "chat.jsonl")


def test_prompt_completion_rows_become_messages_and_keep_extra_fields(tmp_path: Path) -> None:
    data = load(write_lines(tmp_path / "pc.jsonl", [PAIR]))
    assert data.rows == [
        {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}], "answer": "6"}
    ]


def test_text_rows(tmp_path: Path) -> None:
    data = load(write_lines(tmp_path / "t.jsonl", [TEXT, "", {"text": "Two."}]))  # blank lines are ignored
    assert [row["text"] for row in data.rows] == ["The sun is warm.", "Two."]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [CHAT, CHAT, '{"messages": [', CHAT])
    with pytest.raises(DataError, match=rf"^{path}:3: not valid JSON"):
        load(path)


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"messages": []}, "needs a non-empty list `messages`"),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\] needs a `role`"),
        ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\] needs a string `content`"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no non-empty assistant message"),
        ({"messages": [{"role": "assistant", "content": "  "}]}, "no non-empty assistant message"),
        ([1, 2], "a row must be a JSON object"),
    ],
)
def test_bad_chat_row_names_file_and_line(tmp_path: Path, row, problem: str) -> None:
    path = write_lines(tmp_path / "chat.jsonl", [CHAT, row])
    with pytest.raises(DataError, match=rf"^{path}:2: {problem}"):
        load(path)


def test_row_missing_a_field_of_the_first_rows_layout(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pc.jsonl", [PAIR, PAIR, {"prompt": "only a prompt"}])
    with pytest.raises(DataError, match=rf"^{path}:3: needs a non-empty string `completion`"):
        load(path)
    text = write_lines(tmp_path / "t.jsonl", [TEXT, {"text": ""}])
    with pytest.raises(DataError, match=rf"^{text}:2: needs a non-empty string `text`"):
        load(text)


def test_unknown_layout_names_the_keys(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "odd.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(DataError, match=rf"^{path}:1: cannot tell the row layout.*\['question', 'reply'\]"):
        load(path)


def test_explicit_format_overrides_auto(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "mixed.jsonl", [{"text": "plain", "prompt": "p", "completion": "c"}])
    assert load(path, format="text").rows[0]["text"] == "plain"
    assert "messages" in load(path, format="prompt_completion").rows[0]


def test_on_bad_row_skip_counts_and_describes_skips(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "chat.jsonl", [CHAT, "not json", {"messages": []}, CHAT, {"messages": "x"}])
    data = load(path, on_bad_row="skip")
    assert data.rows == [CHAT, CHAT]
    assert data.skipped == 3 and len(data.problems) == 3
    assert data.problems[0].startswith(f"{path}:2:") and data.problems[2].startswith(f"{path}:5:")


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ["nope", "nope"])
    with pytest.raises(DataError, match=r"no usable rows \(2 skipped\)"):
        load(path, on_bad_row="skip")


def test_count_limits_rows(tmp_path: Path) -> None:
    rows = [{"text": f"doc {i}"} for i in range(10)]
    data = load(write_lines(tmp_path / "t.jsonl", rows), count=3)
    assert [row["text"] for row in data.rows] == ["doc 0", "doc 1", "doc 2"]
    # rows after the limit are not read: a broken line there does not matter
    data = load(write_lines(tmp_path / "u.jsonl", rows[:2] + ["{broken"]), count=2)
    assert len(data.rows) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load(tmp_path / "absent.jsonl")


def test_parquet_file(tmp_path: Path) -> None:
    import pyarrow
    import pyarrow.parquet as pq

    table = pyarrow.table({"prompt": ["1+1?", "2+5?", "9+0?"], "completion": ["2", "7", "9"], "answer": ["2", "7", "9"]})
    pq.write_table(table, tmp_path / "pc.parquet")
    data = load(tmp_path / "pc.parquet", count=2)
    assert len(data.rows) == 2
    assert data.rows[1]["messages"] == [{"role": "user", "content": "2+5?"}, {"role": "assistant", "content": "7"}]
    assert data.rows[1]["answer"] == "7"


def test_builtin_sources_and_fingerprint() -> None:
    arithmetic = load_dataset(DataSpec(source="builtin:arithmetic", count=5, levels=[1]), Path("."), seed=0)
    assert len(arithmetic.rows) == 5 and all(row["level"] == 1 for row in arithmetic.rows)
    corpus = load_dataset(DataSpec(source="builtin:corpus", count=4), Path("."), seed=0)
    assert len(corpus.rows) == 4 and all(isinstance(row["text"], str) for row in corpus.rows)
    again = load_dataset(DataSpec(source="builtin:corpus", count=4), Path("."), seed=0)
    other = load_dataset(DataSpec(source="builtin:corpus", count=4), Path("."), seed=1)
    assert corpus.fingerprint() == again.fingerprint() != other.fingerprint()


def test_rlaif_demonstrations_from_the_spec(tmp_path: Path) -> None:
    spec = DataSpec(source="builtin:rlaif", count=40, demonstrations=["critique", "judge"])
    assert {row["kind"] for row in load_dataset(spec, tmp_path, seed=0).rows} == {"critique", "judge"}
    with pytest.raises(ValueError, match="answer"):
        DataSpec(source="builtin:rlaif", demonstrations=["answers"])
