"""Math verifier: extraction, equivalence, and the rules on what scores (table-driven)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from posttrain.verifiers.math_answer import (
    ANSWER_POLICIES,
    MathVerifier,
    answers_match,
    compare_fast,
    extract_final_answer,
    gold_answer,
    simple_number,
    verify_math,
)


@pytest.mark.parametrize(
    ("text", "extractors", "answer"),
    [
        ("so \\boxed{42}", None, "42"),
        ("\\boxed{\\frac{1}{2}} and again \\boxed{ \\frac{1}{2} }", None, "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", None, "\\{1, 2\\}"),
        ("\\fbox{7}", None, "7"),
        ("work...\n#### 1,234", None, "1,234"),
        ("The answer is 17.", None, "17"),
        ("The answer is $\\frac{3}{4}$. Done.", None, "\\frac{3}{4}"),
        ("Answer: 3.5", None, "3.5"),
        ("**Final Answer:** 12", None, "12"),
        ("**Answer**: $-4$", None, "-4"),
        ("The answer is **12**.", None, "12"),
        ("0.5", None, "0.5"),  # a bare one-line answer
        ("we get 3 apples then 5 more", None, "5"),  # no marked answer: the last number of the prose
        ("we get 3 apples then 5 more", ("boxed", "gsm8k", "answer_is", "answer_colon"), None),
        ("we get 3 apples then 5 more", ("last_number",), "5"),
        ("The answer is 4. Wait, the answer is 5.", None, None),  # conflicting
        ("\\boxed{3} or maybe \\boxed{4}", None, None),  # conflicting boxed answers
        ("no answer here\nat all", None, None),
    ],
)
def test_extract_final_answer(text: str, extractors: tuple[str, ...] | None, answer: str | None) -> None:
    found = extract_final_answer(text, extractors) if extractors else extract_final_answer(text)
    assert found.answer == answer


def test_gold_answer_takes_the_final_part_of_a_worked_solution() -> None:
    assert gold_answer("Half of 8 is 4.\n#### 4") == "4"
    assert gold_answer("$\\boxed{x^2}$") == "x^2"
    assert gold_answer(" 12 ") == "12"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", Fraction(12)),
        ("-0.5", Fraction(-1, 2)),
        ("1,000", Fraction(1000)),
        ("1{,}000", Fraction(1000)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\dfrac{1}{2}", Fraction(-1, 2)),
        ("1/0", None),
        ("x=3", None),
        ("1,00", None),
        ("2^{10}", None),
    ],
)
def test_simple_number(text: str, value: Fraction | None) -> None:
    assert simple_number(text) == value


def test_fast_path_defers_inexact_decimals_to_math_verify() -> None:
    assert compare_fast("0.333333", "1/3") is None
    assert compare_fast("3", "4").status == "wrong"
    assert compare_fast("0.5", "\\frac{1}{2}").status == "ok"


EQUIVALENT = [
    ("1/2", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{1}{2}", "1/2"),
    ("\\dfrac12", "0.5"),
    ("1,000", "1000"),
    ("1000", "1{,}000"),
    ("x=3", "3"),
    ("3", "x = 3"),
    ("3.0", "3"),
    ("2^{10}", "1024"),
    ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}"),
    ("50\\%", "0.5"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("0.333333", "\\frac{1}{3}"),
]
NOT_EQUIVALENT = [
    ("1/3", "0.33"), ("2", "3"), ("x=3", "4"), ("\\sqrt{2}", "1.41"), ("(1,2)", "(2,1)"),
    # the same first character (and the same prefix): answers are compared whole
    ("12", "15"), ("100", "1000"), ("-4", "-5"), ("3.5", "3.25"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("x=3", "x=5"),
]


@pytest.mark.parametrize(("pred", "gold"), EQUIVALENT)
def test_equivalent_answers_score_one(pred: str, gold: str) -> None:
    result = verify_math(f"Thus \\boxed{{{pred}}}", gold)
    assert (result.score, result.status) == (1.0, "ok"), result.reason


@pytest.mark.parametrize(("pred", "gold"), NOT_EQUIVALENT)
def test_different_answers_score_zero(pred: str, gold: str) -> None:
    result = verify_math(f"Thus \\boxed{{{pred}}}", gold)
    assert (result.score, result.status) == (0.0, "wrong"), result.reason


@pytest.mark.parametrize(
    ("completion", "gold", "status", "reason_part"),
    [
        ("\\boxed{3} no wait \\boxed{4}", "3", "wrong", "conflicting"),
        ("I am not sure.\nMaybe later.", "3", "wrong", "no final answer"),
        ("\\boxed{" + "1" * 1001 + "}", "1", "wrong", "longer than 1000"),
        ("\\boxed{3}", "\\frac{1}{", "error", "gold answer unparseable"),
        ("\\boxed{3}", "", "error", "gold answer unparseable"),
        ("the answer is 3", "7", "wrong", "not equal"),
    ],
)
def test_scoring_rules(completion: str, gold: str, status: str, reason_part: str) -> None:
    result = verify_math(completion, gold)
    assert result.status == status and result.score == 0.0
    assert reason_part in result.reason


def test_only_the_final_answer_counts() -> None:
    # The right number appears in the working but the boxed final answer is wrong.
    assert verify_math("2 + 2 = 4, so 4 - 1 gives \\boxed{5}", "4").score == 0.0


def test_verify_many_keeps_order() -> None:
    verifier = MathVerifier()
    results = verifier.verify_many(["\\boxed{1}", "\\boxed{x=2}", "\\boxed{3}", "nothing\nhere"], ["1", "2", "4", "1"])
    assert [r.status for r in results] == ["ok", "ok", "wrong", "wrong"]


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown extractor"):
        MathVerifier(extractors=["boxed", "boxxed"])


@pytest.mark.parametrize(
    ("completion", "gold", "policy", "matched"),
    [
        ("So 3 + 4 = 7 and then 7 * 2 = 14.", "14", "final_answer", True),
        ("So 3 + 4 = 7 and then 7 * 2 = 14.", "14", "last_number", True),
        ("So 3 + 4 = 7 and then 7 * 2 = 14.", "14", "marked", False),  # no marked answer
        ("The answer is 4. No, the answer is 5.", "5", "final_answer", False),  # conflicting answers
        ("The answer is 4. No, the answer is 5.", "5", "last_number", True),
        ("\\boxed{14} though 15 looks close", "14", "final_answer", True),  # a marked answer wins
        ("\\boxed{14} though 15 looks close", "14", "last_number", False),
        ("It is 1,000.", "1000", "last_number", True),
        ("That gives 0.5", "1/2", "final_answer", True),
        ("It is 12", "The answer is 12.", "last_number", True),  # a gold written as prose
        ("Answer: x + 1", "x+1", "final_answer", True),  # not a number: compared as text
        ("nothing", "3", "final_answer", False),
        ("So it is 1.", "1", "final_answer", True),  # a short bare answer with words: its number
        ("x = 3", "3", "marked", False),  # nothing marked
        ("Answer: x = 3", "3", "marked", True),
    ],
)
def test_answers_match_by_policy(completion: str, gold: str, policy: str, matched: bool) -> None:
    assert answers_match(completion, gold, policy) is matched


def test_the_math_reward_and_exact_match_share_the_policy() -> None:
    from posttrain.rewards.math_reward import MathReward

    completions = ["So 3 + 4 = 7 and then 7 * 2 = 14.", "The answer is 4. No, the answer is 5.", "\\boxed{14}"]
    golds = ["14", "5", "14"]
    for policy in ANSWER_POLICIES:
        reward = MathReward(match=policy, workers=1)
        scores = [r.score for r in reward(["q"] * 3, completions, examples=[{"answer": g} for g in golds])]
        assert scores == [float(answers_match(c, g, policy)) for c, g in zip(completions, golds)], policy
    with pytest.raises(ValueError, match="unknown answer policy.*final_answer"):
        MathReward(match="last_word")
