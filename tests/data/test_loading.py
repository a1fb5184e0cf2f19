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


def test_conversational_prompt_completion_rows(tmp_path: Path) -> None:
    """TRL's conversational prompt-completion: `prompt` and `completion` are message lists."""
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
        "answer": "4",
    }
    data = load(write_lines(tmp_path / "conv.jsonl", [row, PAIR]))
    assert data.rows[0] == {"messages": row["prompt"] + row["completion"], "answer": "4"}
    assert data.rows[1]["messages"][1] == {"role": "assistant", "content": "6"}


def test_tool_turns_and_tool_calls_are_kept(tmp_path: Path) -> None:
    call = [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]
    row = {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "content": "4", "name": "add"},
        {"role": "assistant", "content": "4"},
    ]}
    data = load(write_lines(tmp_path / "tools.jsonl", [row]))
    assert data.rows[0]["messages"][1] == {"role": "assistant", "content": "", "tool_calls": call}
    assert data.rows[0]["messages"][2] == {"role": "tool", "content": "4", "name": "add"}
    # a turn that only calls a tool is something to learn from
    only_call = {"messages": row["messages"][:2]}
    assert load(write_lines(tmp_path / "call.jsonl", [only_call])).rows[0]["messages"][1]["tool_calls"] == call
    bad = {"messages": [{"role": "user", "content": "x", "tool_calls": call}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(DataError, match=r"bad.jsonl:1: messages\[0\] `tool_calls` must be a list, on an assistant"):
        load(write_lines(tmp_path / "bad.jsonl", [bad]))


def test_each_row_decides_its_layout_and_chat_and_text_do_not_mix(tmp_path: Path) -> None:
    # a file whose first row is prompt/completion and later rows are messages is one chat dataset
    data = load(write_lines(tmp_path / "both.jsonl", [PAIR, CHAT, CHAT]))
    assert [len(row["messages"]) for row in data.rows] == [2, 2, 2]
    path = write_lines(tmp_path / "mixed.jsonl", [CHAT, CHAT, TEXT])
    with pytest.raises(DataError, match=rf"rows mix chat and plain-text layouts \(2 `messages`, 1 `text`; first chat "
                                        rf"row {path}:1, first text row {path}:3\)"):
        load(path)


def test_an_evaluation_set_takes_prompts_without_answers_to_learn_from(tmp_path: Path) -> None:
    """A {question, answer} file (an RL prompt file) works as an exact_match evaluation set; so do chat
    rows without an assistant turn. For training both stay errors."""
    question = {"question": "What is 2 + 3?", "answer": "5"}
    ask = {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}
    path = write_lines(tmp_path / "qa.jsonl", [question, ask, {"prompt": "1+1?", "answer": "2"}])
    rows = load_dataset(DataSpec(source=path.name), tmp_path, seed=0, purpose="evaluate").rows
    assert rows == [
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5"},
        ask,
        {"messages": [{"role": "user", "content": "1+1?"}], "answer": "2"},
    ]
    with pytest.raises(DataError, match=r"qa.jsonl:1: cannot tell the row layout"):
        load(path)


def test_render_raw_keeps_the_texts_and_auto_says_what_it_does(tmp_path: Path, caplog) -> None:
    path = write_lines(tmp_path / "pc.jsonl", [PAIR])
    with caplog.at_level("INFO", logger="posttrain.data.loading"):
        assert "raw_text" not in load(path).rows[0]
    assert any("`render: raw`" in r.getMessage() for r in caplog.records)
    raw = load(path, render="raw").rows[0]
    assert raw["raw_text"] == {"prompt": "3+3?", "completion": "6"} and raw["answer"] == "6"
    conversational = {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match="`render: raw` concatenates string prompts"):
        load(write_lines(tmp_path / "conv.jsonl", [conversational]), render="raw")
