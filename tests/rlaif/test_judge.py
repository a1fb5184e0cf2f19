"""The both-orders judge with stub scorers, the AI-judge reward, and agreement with the ground truth."""

from __future__ import annotations

import pytest

from posttrain.data.rlaif_demonstrations import arithmetic_constitution
from posttrain.rewards.ai_judge import judge_rewards
from posttrain.rlaif.judge import AgreementCounter, JudgeQuery, decide, ground_truth, judge_pairs

FORMAT = arithmetic_constitution().principle("answer_format")


def by_check(queries: list[JudgeQuery]) -> list[float]:
    """A judge that knows the answer: +1 when the first response follows the principle and the second not."""
    return [float(q.principle.follows(q.first)) - float(q.principle.follows(q.second)) for q in queries]


def position_biased(queries: list[JudgeQuery]) -> list[float]:
    return [2.0 for _ in queries]


@pytest.mark.parametrize("forward, backward, margin, label", [
    (1.0, -1.0, 0.0, "a"), (-1.0, 1.0, 0.0, "b"), (1.0, 1.0, 0.0, None), (-1.0, -1.0, 0.0, None),
    (0.0, 0.0, 0.0, None), (0.3, -0.3, 0.5, None), (0.6, -0.6, 0.5, "a"),
])
def test_decide(forward: float, backward: float, margin: float, label: str | None) -> None:
    assert decide(forward, backward, margin) == label


def test_both_orders_are_asked_with_swapped_responses() -> None:
    seen: list[JudgeQuery] = []

    def record(queries: list[JudgeQuery]) -> list[float]:
        seen.extend(queries)
        return by_check(queries)

    verdicts = judge_pairs(record, [(FORMAT, "q", "Answer: 5", "5"), (FORMAT, "q", "5", "Answer: 5")])
    swapped = [("Answer: 5", "5"), ("5", "Answer: 5")]
    assert [(q.first, q.second) for q in seen] == swapped + swapped[::-1]
    assert [v.label for v in verdicts] == ["a", "b"]
    assert (verdicts[0].forward, verdicts[0].backward) == (1.0, -1.0)


def test_position_bias_gives_ties_that_are_counted() -> None:
    pairs = [(FORMAT, "q", "Answer: 5", "5"), (FORMAT, "q", "The answer is 5.", "Answer: 5")]
    counter = AgreementCounter()
    for (principle, _, a, b), verdict in zip(pairs, judge_pairs(position_biased, pairs)):
        counter.add(verdict, ground_truth(principle, a, b))
    metrics = counter.metrics()
    assert (metrics["judge/labelled"], metrics["judge/ties_dropped"], metrics["judge/agreement_n"]) == (0, 2, 0)


def test_agreement_with_ground_truth() -> None:
    def half_wrong(queries: list[JudgeQuery]) -> list[float]:  # right on the first pair, inverted on the second
        margins = by_check(queries)
        return margins[:2] + [-m for m in margins[2:]]

    pairs = [(FORMAT, "q", "Answer: 5", "5"), (FORMAT, "q", "Answer: 6", "6"), (FORMAT, "q", "5", "6")]
    counter = AgreementCounter()
    for (principle, _, a, b), verdict in zip(pairs, judge_pairs(half_wrong, pairs)):
        counter.add(verdict, ground_truth(principle, a, b))
    assert (counter.agree, counter.disagree, counter.ties) == (1, 1, 1)
    assert counter.metrics()["judge/agreement"] == 0.5


def test_scorer_returning_the_wrong_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="returned 1 margins for 2 queries"):
        judge_pairs(lambda queries: [0.0], [(FORMAT, "q", "a", "b")])


def test_judge_reward_against_a_reference() -> None:
    results = judge_rewards(by_check, [FORMAT], ["q"] * 3, ["Answer: 5", "5", "Answer: 5"],
                            references=["5", "5", "Answer: 5"])
    assert [r.score for r in results] == [1.0, 0.5, 0.5]
    assert [r.status for r in results] == ["ok", "ok", "ok"]


def test_judge_reward_within_groups() -> None:
    prompts = ["q1", "q1", "q1", "q2", "q2"]
    completions = ["Answer: 5", "5", "The answer is 5.", "Answer: 1", "Answer: 1"]
    results = judge_rewards(by_check, [FORMAT], prompts, completions, references=None)
    # q1: the formatted answer beats both others; those two tie; q2: both tie
    assert [r.score for r in results] == [1.0, 0.25, 0.25, 0.5, 0.5]
    assert results[1].status == "wrong"
    biased = judge_rewards(position_biased, [FORMAT], prompts, completions, references=None)
    assert all(r.score == 0.5 for r in biased)  # a judge that only sees positions gives no signal
