"""Preference rows: the built-in pairs, checking rows from files, and tokenising pairs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from posttrain.config.common import DataSpec
from posttrain.data.preferences import builtin_preference_rows, check_pair, encode_pairs, load_preferences
from posttrain.errors import DataError
from posttrain.models.tiny import build_tokenizer


def _problem(prompt: str) -> tuple[str, int, int]:
    """(operation, a, b) of a built-in question, whichever wording it has."""
    a, b = (int(n) for n in re.findall(r"\d+", prompt)[:2])
    return ("-" if "-" in prompt or "gives away" in prompt else "+", a, b)


def test_builtin_pairs_prefer_the_right_answer_and_the_plain_format() -> None:
    rows = builtin_preference_rows("train", 200, seed=0)
    kinds = {row["kind"] for row in rows}
    assert kinds == {"correct", "format"}
    for row in rows:
        op, a, b = _problem(row["prompt"])
        assert row["chosen"] == str(a + b if op == "+" else a - b) == row["answer"]
        assert row["rejected"] != row["chosen"]
        if row["kind"] == "correct":
            assert int(row["rejected"]) >= 0
        else:
            assert row["rejected"].endswith(f" {row['answer']}.") and len(row["rejected"]) > len(row["chosen"])
    assert builtin_preference_rows("train", 50, seed=0) == rows[:50]  # a pure function of (split, count, seed)


def test_held_out_pairs_share_no_problem_with_training_pairs() -> None:
    train = {_problem(row["prompt"]) for row in builtin_preference_rows("train", 3000, seed=0)}
    test = {_problem(row["prompt"]) for row in builtin_preference_rows("test", 200, seed=0)}
    assert len(test) == 200 and not train & test


def test_text_and_message_rows_give_the_same_pair() -> None:
    text = check_pair({"prompt": "1 + 1?", "chosen": "2", "rejected": "3", "kind": "x"}, "f.jsonl:1")
    chat = check_pair(
        {
            "prompt": [{"role": "user", "content": "1 + 1?"}],
            "chosen": [{"role": "assistant", "content": "2"}],
            "rejected": [{"role": "assistant", "content": "3"}],
            "kind": "x",
        },
        "f.jsonl:2",
    )
    assert (text.prompt, text.chosen, text.rejected, text.extra) == (chat.prompt, chat.chosen, chat.rejected, chat.extra)
    assert text.chosen == [{"role": "assistant", "content": "2"}]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, r"f\.jsonl:7: missing field\(s\) `rejected`"),
        ({"chosen": "a", "rejected": "b"}, r"f\.jsonl:7: missing field\(s\) `prompt`"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "f.jsonl:7: `chosen` and `rejected` are identical"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "f.jsonl:7: `chosen` is an empty response"),
        ({"prompt": "q", "chosen": "a", "rejected": []}, "f.jsonl:7: `rejected` must be a string or a non-empty list"),
        ({"prompt": "q", "chosen": [{"role": "bot", "content": "a"}], "rejected": "b"}, r"chosen\[0\] needs a `role`"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "f.jsonl:7: `prompt` is empty"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": float("nan")}, "`margin` must be a finite number"),
        (["q", "a", "b"], "f.jsonl:7: a row must be a JSON object"),
    ],
)
def test_bad_rows_are_errors_naming_the_row(row: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_pair(row, "f.jsonl:7")


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


GOOD = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}


def test_a_bad_jsonl_row_stops_loading_with_file_and_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "pairs.jsonl", [GOOD, GOOD, {"prompt": "q", "chosen": "x", "rejected": "x"}])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: `chosen` and `rejected` are identical"):
        load_preferences(DataSpec(source=str(path)), tmp_path, seed=0)


def test_skip_mode_counts_bad_rows(tmp_path: Path) -> None:
    rows = [GOOD, {"prompt": "q", "chosen": "4"}, "{not json", {"prompt": "q", "chosen": "", "rejected": "b"}, GOOD]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    data = load_preferences(DataSpec(source="pairs.jsonl", on_bad_row="skip"), tmp_path, seed=0)
    assert (len(data.pairs), data.skipped) == (2, 3)
    assert [problem.split(": ")[0] for problem in data.problems] == [f"{path}:{line}" for line in (2, 3, 4)]


def test_parquet_rows_are_checked_with_their_row_number(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "pairs.parquet"
    pd.DataFrame([GOOD, {**GOOD, "rejected": GOOD["chosen"]}]).to_parquet(path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} row 1: `chosen` and `rejected` are identical"):
        load_preferences(DataSpec(source=str(path)), tmp_path, seed=0)


def test_builtin_source_and_other_builtins(tmp_path: Path) -> None:
    data = load_preferences(DataSpec(source="builtin:preferences", split="test", count=20), tmp_path, seed=0)
    assert len(data.pairs) == 20 and data.pairs[0].extra["kind"] == "correct"
    with pytest.raises(DataError, match="holds no preference pairs"):
        load_preferences(DataSpec(source="builtin:arithmetic"), tmp_path, seed=0)


def test_encoded_pairs_mark_exactly_the_response_tokens() -> None:
    tokenizer = build_tokenizer()
    pairs = [check_pair(row, f"row {i}") for i, row in enumerate(builtin_preference_rows("train", 6, seed=0))]
    rows = encode_pairs(tokenizer, pairs, seq_len=64)
    assert len({len(values) for row in rows for values in row.values()}) == 1  # one padded length
    for pair, row in zip(pairs, rows):
        for side in ("chosen", "rejected"):
            ids, mask = row[f"{side}_input_ids"], row[f"{side}_response_mask"]
            response = tokenizer.decode([t for t, m in zip(ids, mask) if m])
            assert response == getattr(pair, side)[0]["content"] + "<|end|>"


def test_a_prompt_longer_than_seq_len_is_an_error_naming_the_row() -> None:
    pair = check_pair({"prompt": "What is 12 + 34? " * 10, "chosen": "46", "rejected": "47"}, "long.jsonl:5")
    with pytest.raises(DataError, match="long.jsonl:5: the prompt fills all 16 tokens"):
        encode_pairs(build_tokenizer(), [pair], seq_len=16)


def _slips(answer: int) -> set[int]:
    """The near misses of an answer: off by 1, 2 or 10, or its last two digits swapped."""
    text = str(answer)
    swapped = {int(text[:-2] + text[-1] + text[-2])} if len(text) >= 2 else set()
    return {answer + d for d in (-10, -2, -1, 1, 2, 10) if answer + d >= 0} | swapped


def test_negatives_choose_clearly_wrong_or_near_miss_answers() -> None:
    clear = [r for r in builtin_preference_rows("train", 400, seed=0) if r["kind"] != "format"]
    near = [r for r in builtin_preference_rows("train", 400, seed=0, negatives="near") if r["kind"] != "format"]
    assert {r["kind"] for r in clear} == {"correct"} and {r["kind"] for r in near} == {"near_miss"}
    for row in clear:  # 30-60% of the answer away, at least 3
        answer, wrong = int(row["answer"]), int(row["rejected"])
        assert wrong >= 0 and max(3, round(0.3 * answer)) <= abs(wrong - answer) <= max(6, round(0.6 * answer))
    assert all(int(r["rejected"]) in _slips(int(r["answer"])) for r in near)
    # the same problems either way, so the two kinds of pair can be compared problem for problem
    assert [r["prompt"] for r in clear] == [r["prompt"] for r in near]
    mixed = builtin_preference_rows("train", 400, seed=0, negatives="mixed")
    assert [r["kind"] for r in mixed[:8]] == ["correct", "format", "near_miss", "format"] * 2
    with pytest.raises(ValueError, match="negatives"):
        builtin_preference_rows("train", 4, seed=0, negatives="far")


def test_negatives_reach_the_builtin_source_and_only_it(tmp_path: Path, write_recipe) -> None:
    spec = DataSpec(source="builtin:preferences", count=40, negatives="near")
    kinds = {pair.extra["kind"] for pair in load_preferences(spec, tmp_path, seed=0).pairs}
    assert kinds == {"near_miss", "format"}
    from posttrain.errors import RecipeError
    from posttrain.recipe import load_recipe

    recipe = write_recipe(tmp_path, """
        name: x
        model: {name_or_path: "builtin:micro"}
        stages:
          - name: sft
            kind: sft
            data: {source: "builtin:arithmetic", count: 10, negatives: near}
            train: {steps: 1}
    """)
    with pytest.raises(RecipeError, match=r"data.negatives: only `builtin:preferences`"):
        load_recipe(recipe)


def test_implicit_prompt_rows_take_the_shared_turns_as_prompt() -> None:
    """TRL's implicit-prompt preference rows (UltraFeedback's layout): whole conversations, no `prompt`."""
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "What is 2 + 3?"}
    follow = [{"role": "assistant", "content": "5"}, {"role": "user", "content": "And 2 + 4?"}]
    row = {
        "chosen": [system, user, *follow, {"role": "assistant", "content": "6"}],
        "rejected": [system, user, *follow, {"role": "assistant", "content": "7"}],
        "source": "uf",
    }
    pair = check_pair(row, "f.jsonl:1")
    assert pair.prompt == [system, user, *follow]
    assert pair.chosen == [{"role": "assistant", "content": "6"}] and pair.rejected == [{"role": "assistant", "content": "7"}]
    assert pair.extra == {"source": "uf"}
    # conversations differing from their first answer on: the prompt stops before the assistant turns
    early = check_pair({"chosen": [user, *follow, {"role": "assistant", "content": "6"}],
                        "rejected": [user, {"role": "assistant", "content": "4"}]}, "f.jsonl:2")
    assert early.prompt == [user] and len(early.chosen) == 3 and early.rejected == [{"role": "assistant", "content": "4"}]
    with pytest.raises(DataError, match="f.jsonl:3: no `prompt`, and `chosen` and `rejected` share no opening user turn"):
        check_pair({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}, "f.jsonl:3")
