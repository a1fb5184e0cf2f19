"""The built-in demonstration: its targets agree with the program checks, and follow edited templates."""

from __future__ import annotations

import re

import pytest

from posttrain.data.rlaif_demonstrations import STYLES, arithmetic_constitution, rlaif_sft_rows
from posttrain.data.constitution import parse_constitution
from posttrain.data.rlaif_demonstrations import ARITHMETIC_CONSTITUTION

CONSTITUTION = arithmetic_constitution()


def test_styles_break_the_principles_the_docstring_says() -> None:
    broken = {name: [p.name for p in CONSTITUTION.principles if not p.follows(fmt("12"))] for name, (fmt, _) in STYLES.items()}
    assert broken == {"clean": [], "bare": ["answer_format"], "sentence": ["answer_format"],
                      "filler": ["answer_format", "no_filler", "brevity"], "filler_tagged": ["no_filler"],
                      "long": ["brevity"]}


def test_demonstration_targets_match_the_ground_truth() -> None:
    rows = rlaif_sft_rows("train", 400, seed=0)
    kinds = {row["kind"] for row in rows}
    assert kinds == {"answer", "critique", "revision", "judge"}
    requests = {p.critique_request: p for p in CONSTITUTION.principles}
    judges = {p.judge_request: p for p in CONSTITUTION.principles}
    for row in rows:
        user, target = row["messages"][0]["content"], row["messages"][1]["content"]
        if row["kind"] == "critique":
            principle = requests[user.split("\n")[0]]
            response = user.split("Response: ")[1]
            assert (target == "No problem.") == principle.follows(response)
        elif row["kind"] == "revision":
            response = user.split("Response: ")[1].split("\n")[0]
            assert target == "Answer: " + re.findall(r"\d+", response)[-1]
            assert all(p.follows(target) for p in CONSTITUTION.principles)
        elif row["kind"] == "judge":
            principle = judges[user.split("\n")[0]]
            a, b = user.split("\nA: ")[1].split("\nB: ")
            assert principle.follows(a if target == "A" else b) and not principle.follows(b if target == "A" else a)
    labels = [row["messages"][1]["content"] for row in rows if row["kind"] == "judge"]
    assert 0.35 < labels.count("A") / len(labels) < 0.65


def test_edited_templates_are_what_the_demonstrations_teach() -> None:
    edited = parse_constitution({**ARITHMETIC_CONSTITUTION, "templates": {
        "critique": {"text": "Check: {critique_request}\nReply: {response}"}}})
    critiques = [r for r in rlaif_sft_rows("train", 200, seed=0, constitution=edited) if r["kind"] == "critique"]
    assert critiques and all(r["messages"][0]["content"].startswith("Check: ") for r in critiques)


def test_test_split_demonstrations_share_no_problem_with_train() -> None:
    def questions(split: str) -> set[str]:
        return {r["messages"][0]["content"] for r in rlaif_sft_rows(split, 300, seed=0) if r["kind"] == "answer"}
    assert not questions("train") & questions("test")


def test_answers_carry_the_right_number_and_mostly_end_in_the_answer_line_after_a_filler() -> None:
    # the SFT model's greedy answer must be one coherent style (with none dominant, greedy decoding blends
    # their openings) that breaks a principle whose fix leaves the number after "Answer:", where it was computed
    rows = [row for row in rlaif_sft_rows("train", 2000, seed=0) if row["kind"] == "answer"]
    assert all(re.findall(r"\d+", row["messages"][1]["content"])[-1] == row["answer"] for row in rows)
    styles = [row["style"] for row in rows]
    assert set(STYLES) == set(styles)
    dominant = max(STYLES, key=styles.count)
    assert dominant == "filler_tagged" and styles.count(dominant) / len(styles) > 0.5
    assert all(styles.count(dominant) > 4 * styles.count(name) for name in STYLES if name != dominant)
    broken = [p.name for p in CONSTITUTION.principles if not p.follows(STYLES[dominant][0]("12"))]
    assert broken == ["no_filler"] and STYLES[dominant][0]("12").endswith("Answer: 12")


def test_demonstrations_select_the_kinds_of_row() -> None:
    answers = rlaif_sft_rows("train", 300, seed=0, demonstrations=["answer"])
    assert len(answers) == 300 and {row["kind"] for row in answers} == {"answer"}
    roles = rlaif_sft_rows("train", 600, seed=0, demonstrations=["critique", "revision", "judge"])
    counts = {kind: sum(row["kind"] == kind for row in roles) for kind in ("critique", "revision", "judge")}
    assert all(150 < n < 250 for n in counts.values()), counts
    with pytest.raises(ValueError, match="valid: answer, critique, revision, judge"):
        rlaif_sft_rows("train", 10, seed=0, demonstrations=["answers"])
