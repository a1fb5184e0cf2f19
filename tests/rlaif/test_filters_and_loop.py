"""Degenerate-revision filters and the critique -> revise loop, with a stub critic."""

from __future__ import annotations

import random

import pytest

from posttrain.data.rlaif_demonstrations import arithmetic_constitution
from posttrain.rlaif.critique import critique_and_revise, violation_rates
from posttrain.rlaif.filters import count_reasons, degenerate_reason

MARKERS = arithmetic_constitution().echo_markers()


@pytest.mark.parametrize(
    "original, revision, truncated, expected",
    [
        ("The answer is 5.", "Answer: 5", False, None),
        ("The answer is 5.", "   ", False, "empty"),
        ("The answer is 5.", "The  answer is 5.\n", False, "unchanged"),
        ("The answer is 5.", "Answer: 5", True, "too_long"),
        ("The answer is 5.", "Answer: " + "5" * 60, False, "too_long"),
        ("The answer is 5.", "Question: What is 2 + 3?", False, "template_echo"),
        ("5", "Rewrite the response to end with Answer: N.", False, "template_echo"),
    ],
)
def test_degenerate_reason(original: str, revision: str, truncated: bool, expected: str | None) -> None:
    assert degenerate_reason(original, revision, truncated=truncated, max_chars=60, echo_markers=MARKERS) == expected


@pytest.mark.parametrize(
    "original, revision, expected",
    [
        ("The answer is 5.", "Answer: 5", None),
        ("Well, I think it is 12.", "Answer: 12", None),
        ("The answer is 5.", "Answer: 6", "changed_answer"),
        ("We get 3. Answer: 4", "Answer: 3", "changed_answer"),
        ("five", "Answer: 5", "changed_answer"),
    ],
)
def test_keep_answer_drops_revisions_that_change_the_number(original: str, revision: str, expected: str | None) -> None:
    assert degenerate_reason(original, revision, truncated=False, max_chars=60, echo_markers=MARKERS,
                             keep_answer=True) == expected
    assert degenerate_reason(original, revision, truncated=False, max_chars=60, echo_markers=MARKERS) is None


def test_loop_with_keep_answer_keeps_the_response_number() -> None:
    generate, _ = stub_critic({"The answer is 5.": "Answer: 6", "Answer: 4": "Answer: 4.", "7": "Answer: 7"})
    result = critique_and_revise(
        arithmetic_constitution(), ["q1", "q2", "q3"], ["The answer is 5.", "Answer: 4", "7"], generate,
        rounds=1, rng=random.Random(0), max_chars=100, keep_answer=True,
    )
    assert [item.final for item in result.items] == ["The answer is 5.", "Answer: 4.", "Answer: 7"]
    assert result.dropped["changed_answer"] == 1 and result.metrics()["revise/dropped_changed_answer"] == 1


def test_count_reasons_lists_every_reason() -> None:
    assert count_reasons(["empty", None, "empty", "too_long"]) == {
        "empty": 2, "unchanged": 0, "too_long": 1, "template_echo": 0, "changed_answer": 0}


def stub_critic(revisions: dict[str, str]):
    """Critiques say which principle was asked; revisions come from a table keyed by the response."""
    calls: list[list[str]] = []

    def generate(texts: list[str]) -> list[tuple[str, bool]]:
        calls.append(texts)
        out = []
        for text in texts:
            response = text.split("Response: ")[1].split("\n")[0]
            if "\nCritique: " in text:  # a revision prompt
                out.append((revisions.get(response, response), False))
            else:
                out.append((f"critique of {response}", False))
        return out

    return generate, calls


def test_loop_revises_filters_and_keeps_principles_and_critiques() -> None:
    constitution = arithmetic_constitution()
    generate, calls = stub_critic({"The answer is 5.": "Answer: 5", "Answer: 5": "Answer: 5",
                                   "7": "", "Well, 9": "Question: echo"})
    result = critique_and_revise(
        constitution, ["q1", "q2", "q3", "q4"], ["The answer is 5.", "Answer: 4", "7", "Well, 9"], generate,
        rounds=2, rng=random.Random(0), max_chars=100, examples=[{"answer": str(n)} for n in (5, 4, 7, 9)],
    )
    assert len(calls) == 4  # per round one batched critique call and one batched revision call
    first, clean, empty, echo = result.items
    assert first.final == "Answer: 5" and first.revised
    assert [r.dropped for r in first.rounds] == [None, "unchanged"]  # round 2 revises the revision
    assert first.rounds[0].critique == "critique of The answer is 5."
    assert not clean.revised and clean.final == "Answer: 4"
    assert not empty.revised and not echo.revised
    assert result.dropped == {"empty": 2, "unchanged": 3, "too_long": 0, "template_echo": 2, "changed_answer": 0}
    pair = first.pair_row()
    assert (pair["chosen"], pair["rejected"], pair["answer"]) == ("Answer: 5", "The answer is 5.", "5")
    assert pair["principles"] == [first.rounds[0].principle] and pair["critiques"] == [first.rounds[0].critique]
    assert first.sft_row()["messages"][-1] == {"role": "assistant", "content": "Answer: 5"}
    metrics = result.metrics()
    assert metrics["revise/prompts_revised"] == 1 and metrics["revise/accepted"] == 1


def test_violation_rates_per_principle_and_any() -> None:
    rates = violation_rates(arithmetic_constitution(), ["Answer: 5", "5", "Well, Answer: 5", "We work it out and get 5. Answer: 5"])
    assert rates == {"answer_format": 0.25, "no_filler": 0.25, "brevity": 0.25, "any": 0.75}
