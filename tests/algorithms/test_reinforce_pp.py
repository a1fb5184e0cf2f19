"""REINFORCE++ (global-batch normalisation, plain and with a group baseline) and the valid-completion
statistics of the group estimators, against hand-computed examples and a plain loop."""

from __future__ import annotations

import statistics

import pytest
import torch

from posttrain.algorithms import (
    dr_grpo_advantages,
    get_advantage_estimator,
    group_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)

F64 = torch.float64


def test_reinforce_pp_by_hand() -> None:
    # rewards (1, 0, 0 | 1, 1, 1): batch mean 2/3, unbiased variance (4 * 1/9 + 2 * 4/9) / 5 = 4/15
    rewards_B = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=F64)
    std = (4 / 15) ** 0.5
    expected = [(r - 2 / 3) / (std + 1e-6) for r in rewards_B.tolist()]
    torch.testing.assert_close(reinforce_pp_advantages(rewards_B, 3), torch.tensor(expected, dtype=F64))
    # with a baseline: centred (2/3, -1/3, -1/3 | 0, 0, 0), batch mean 0, variance (6/9) / 5 = 2/15;
    # the all-correct group keeps 0 (its baseline removed its reward), unlike plain REINFORCE++
    std = (2 / 15) ** 0.5
    expected = [c / (std + 1e-6) for c in (2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0)]
    torch.testing.assert_close(reinforce_pp_baseline_advantages(rewards_B, 3), torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize("seed", range(4))
def test_reinforce_pp_baseline_matches_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    group_size = 2 + seed
    rewards_B = torch.randn(3 * group_size, generator=generator, dtype=F64)
    rewards = rewards_B.tolist()
    centred = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        centred += [r - statistics.mean(group) for r in group]
    mean, std = statistics.mean(centred), statistics.stdev(centred)
    expected = torch.tensor([(c - mean) / (std + 1e-6) for c in centred], dtype=F64)
    torch.testing.assert_close(reinforce_pp_baseline_advantages(rewards_B, group_size), expected)


@pytest.mark.parametrize("estimator", [reinforce_pp_advantages, reinforce_pp_baseline_advantages])
def test_reinforce_pp_normalises_over_the_global_batch(estimator) -> None:
    """Two processes holding the same rows (the collective doubles every sum) see the statistics of the
    concatenated batch, not of their own half."""
    rewards_B = torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 1.0], dtype=F64)
    doubled = estimator(torch.cat([rewards_B, rewards_B]), 2)[:6]
    global_view = estimator(rewards_B, 2, sum_over_processes=lambda totals: 2 * totals)
    torch.testing.assert_close(global_view, doubled)
    assert not torch.allclose(global_view, estimator(rewards_B, 2))


def test_excluded_completions_stay_out_of_the_group_statistics() -> None:
    """Issue 22, defect 3: valid (1, 0, 0) and one excluded completion. The group mean 1/3 and unbiased std
    sqrt(1/3) come from the valid three: (1.155, -0.577, -0.577); imputing the excluded one with the valid
    mean shrank the std and gave (1.414, -0.707, -0.707)."""
    rewards_B = torch.tensor([1.0, 0.0, 0.0, 9.0, 0.5, 0.5, 0.5, 0.5], dtype=F64)
    valid_B = torch.tensor([True, True, True, False, True, True, True, True])
    grpo = group_advantages(rewards_B, 4, valid_B=valid_B)
    torch.testing.assert_close(grpo[:4], torch.tensor([1.154700, -0.577350, -0.577350, 0.0], dtype=F64), atol=1e-5, rtol=0)
    assert grpo[4:].abs().max() == 0
    torch.testing.assert_close(dr_grpo_advantages(rewards_B, 4, valid_B=valid_B)[:4],
                               torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0], dtype=F64))
    # leave-one-out over the valid three: 1 - 0, 0 - (1 + 0) / 2, 0 - 0.5; the excluded one gets 0
    torch.testing.assert_close(rloo_advantages(rewards_B, 4, valid_B=valid_B)[:4],
                               torch.tensor([1.0, -0.5, -0.5, 0.0], dtype=F64))
    # baseline variant: centred (2/3, -1/3, -1/3) and four 0s over 7 valid rows: variance (6/9) / 6 = 1/9
    expected = torch.tensor([2.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(reinforce_pp_baseline_advantages(rewards_B, 4, valid_B=valid_B, eps=0.0), expected)


def test_a_group_with_one_valid_completion_has_no_signal() -> None:
    rewards_B = torch.tensor([1.0, 5.0, 7.0], dtype=F64)
    valid_B = torch.tensor([True, False, False])
    for estimator in (group_advantages, dr_grpo_advantages, rloo_advantages):
        assert estimator(rewards_B, 3, valid_B=valid_B).tolist() == [0.0, 0.0, 0.0]


def test_reinforce_pp_estimators_are_registered_as_outcome_estimators() -> None:
    assert get_advantage_estimator("reinforce_pp") is reinforce_pp_advantages
    assert get_advantage_estimator("reinforce_pp_baseline") is reinforce_pp_baseline_advantages
