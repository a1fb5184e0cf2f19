"""Combining reward terms: weights, gates, normalisation, schedules, truncation and errors, by hand."""

from __future__ import annotations

import math

import pytest

from posttrain.rewards import CompositeReward, RewardEntry, RewardResult, RewardSource, WeightSchedule, combine_rewards
from posttrain.rewards.compose import zscore


def test_weighted_sum() -> None:
    combined = combine_rewards(
        {"correct": [1.0, 0.0, 1.0], "length": [0.0, -0.5, -1.0]},
        {"correct": ["ok", "wrong", "ok"], "length": ["ok", "ok", "ok"]},
        weights={"correct": 2.0, "length": 0.5},
    )
    assert combined.totals == [2.0, -0.25, 1.5]
    assert combined.contributions == {"correct": [2.0, 0.0, 2.0], "length": [0.0, -0.25, -0.5]}
    assert combined.excluded == [False, False, False]


def test_gate_zeroes_a_term_where_the_gate_did_not_pass() -> None:
    combined = combine_rewards(
        {"format": [1.0, 0.0, 1.0], "math": [1.0, 1.0, 0.0]},
        {"format": ["ok", "wrong", "ok"], "math": ["ok", "ok", "wrong"]},
        weights={"format": 0.1, "math": 1.0},
        gates={"math": "format"},
    )
    # Example 1 is correct but badly formatted: its correctness does not count.
    assert combined.totals == pytest.approx([1.1, 0.0, 0.1])


def test_group_zscore_by_hand() -> None:
    # Group A: scores 1, 0, 0, 1 -> mean 0.5, std 0.5 -> +1, -1, -1, +1. Group B: all 1 -> no signal -> 0.
    combined = combine_rewards(
        {"math": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]},
        {"math": ["ok", "wrong", "wrong", "ok", "ok", "ok"]},
        weights={"math": 3.0},
        normalize={"math": "group_zscore"},
        group_ids=["A", "A", "A", "A", "B", "B"],
    )
    assert combined.totals == [3.0, -3.0, -3.0, 3.0, 0.0, 0.0]


def test_batch_zscore_by_hand() -> None:
    # Scores 0, 1, 2, 3: mean 1.5, population std sqrt(1.25).
    std = math.sqrt(1.25)
    combined = combine_rewards(
        {"rm": [0.0, 1.0, 2.0, 3.0]}, {"rm": ["ok"] * 4}, weights={"rm": 1.0}, normalize={"rm": "batch_zscore"}
    )
    assert combined.totals == pytest.approx([-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std])


def test_errors_are_excluded_from_statistics_and_flagged() -> None:
    combined = combine_rewards(
        {"math": [1.0, 0.0, 0.0], "length": [-0.5, 0.0, 0.0]},
        {"math": ["ok", "wrong", "error"], "length": ["ok", "ok", "ok"]},
        weights={"math": 1.0, "length": 1.0},
        normalize={"math": "batch_zscore"},
    )
    # Statistics over examples 0 and 1 only: mean 0.5, std 0.5.
    assert combined.contributions["math"] == [1.0, -1.0, 0.0]
    assert combined.excluded == [False, False, True]
    assert combined.totals == [0.5, -1.0, 0.0]


def test_errors_are_excluded_from_group_zscore_statistics() -> None:
    # group A: valid (1, 0, 0) and an error: mean 1/3, population std sqrt(2/9), so (1.414, -0.707, -0.707) and
    # 0 for the error; counting the error's 0 would give mean 1/4, std sqrt(3/16): (1.732, -0.577, -0.577, -0.577)
    combined = combine_rewards(
        {"math": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]},
        {"math": ["ok", "wrong", "wrong", "error", "ok", "wrong"]},
        weights={"math": 1.0},
        normalize={"math": "group_zscore"},
        group_ids=["A", "A", "A", "A", "B", "B"],
    )
    third = 1 / 3
    std = math.sqrt(2 / 9)
    assert combined.contributions["math"] == pytest.approx([(1 - third) / std, -third / std, -third / std, 0.0, 1.0, -1.0])
    assert combined.excluded == [False, False, False, True, False, False]


def test_truncated_completions_keep_penalties_but_lose_credit() -> None:
    combined = combine_rewards(
        {"math": [1.0, 1.0], "length": [-1.0, -1.0], "lenient": [1.0, 1.0]},
        {"math": ["ok", "ok"], "length": ["ok", "ok"], "lenient": ["ok", "ok"]},
        weights={"math": 1.0, "length": 1.0, "lenient": 1.0},
        truncated=[False, True],
        allow_truncated={"lenient": True},
    )
    assert combined.contributions["math"] == [1.0, 0.0]
    assert combined.contributions["length"] == [-1.0, -1.0]
    assert combined.contributions["lenient"] == [1.0, 1.0]


def test_zero_weight_errors_do_not_exclude() -> None:
    combined = combine_rewards({"judge": [0.0]}, {"judge": ["error"]}, weights={"judge": 0.0})
    assert combined.excluded == [False]


def test_group_zscore_needs_groups() -> None:
    with pytest.raises(ValueError, match="group ids"):
        combine_rewards({"m": [1.0]}, {"m": ["ok"]}, weights={"m": 1.0}, normalize={"m": "group_zscore"})


def test_zscore_masks() -> None:
    assert zscore([5.0, 1.0, 3.0], [False, True, True]) == [0.0, -1.0, 1.0]


@pytest.mark.parametrize(("step", "weight"), [(0, 0.0), (50, 0.0), (75, 0.25), (100, 0.5), (150, 1.0), (1000, 1.0)])
def test_linear_schedule(step: int, weight: float) -> None:
    schedule = WeightSchedule(start=0.0, end=1.0, steps=100, start_step=50)
    assert schedule.weight_at(step) == pytest.approx(weight)


class Fixed(RewardSource):
    """Returns preset results and counts calls."""

    def __init__(self, results: list[RewardResult]) -> None:
        self.results = results

    def score(self, prompts, completions, examples, step):
        return list(self.results)


def test_composite_reward_end_to_end() -> None:
    ok, wrong, err = RewardResult(1.0, "ok", ""), RewardResult(0.0, "wrong", ""), RewardResult(0.0, "error", "gold")
    entries = [
        RewardEntry(source="format", name="fmt", weight=0.5),
        RewardEntry(source="math", name="correct", gate="fmt", schedule={"start": 1.0, "end": 3.0, "steps": 10}),
    ]
    composite = CompositeReward(
        entries, sources={"fmt": Fixed([ok, ok, wrong, ok]), "correct": Fixed([ok, wrong, ok, err])}
    )
    result = composite(["p"] * 4, ["c"] * 4, examples=[{"answer": "1"}] * 4, step=5)
    # correct weight at step 5 = 2.0; example 2 fails the format gate; example 3 is an infrastructure error.
    assert result.totals == [2.5, 0.5, 0.0, 0.5]
    assert result.excluded == [False, False, False, True]
    assert result.metrics["reward/correct/weight"] == 2.0
    assert result.metrics["reward/correct/error_rate"] == 0.25
    assert result.metrics["reward/correct/mean"] == pytest.approx(2 / 3)
    assert result.metrics["reward/fmt/pass_rate"] == 0.75
    assert result.metrics["reward/correct/seconds"] >= 0.0
    assert [r.status for r in result.results["correct"]] == ["ok", "wrong", "ok", "error"]


def test_composite_groups_by_prompt_by_default() -> None:
    scores = [RewardResult(s, "ok", "") for s in (1.0, 0.0, 5.0, 5.0)]
    composite = CompositeReward(
        [RewardEntry(source="format", name="s", normalize="group_zscore")], sources={"s": Fixed(scores)}
    )
    result = composite(["p1", "p1", "p2", "p2"], ["a", "b", "c", "d"])
    assert result.totals == [1.0, -1.0, 0.0, 0.0]


def test_composite_builds_real_sources_and_marks_truncation() -> None:
    composite = CompositeReward(
        [
            {"source": "format", "args": {"pattern": r"\\boxed\{.+\}", "mode": "search"}, "weight": 0.2},
            {"source": "math", "gate": "format"},
            {"source": "length_penalty", "args": {"target_length": 20, "max_length": 40}},
        ]
    )
    completions = ["so \\boxed{4}", "so \\boxed{4}", "4", "so \\boxed{5}"]
    examples = [{"answer": "4"}, {"answer": "4", "truncated": True}, {"answer": "4"}, {"answer": "4"}]
    result = composite(["2+2?"] * 4, completions, examples=examples)
    assert result.totals == pytest.approx([1.2, 0.0, 0.0, 0.2])
