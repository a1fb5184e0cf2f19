"""PPO's KL-shaped token rewards and GRPO's handling of excluded completions, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.rl.objectives import Experience, GRPOObjective, PPOObjective, normalize_reward
from tests.rl.conftest import rl_config


def experience(rewards: list[float], excluded: list[bool], mask: list[list[int]], old=None, ref=None) -> Experience:
    mask_BC = torch.tensor(mask, dtype=torch.bool)
    zeros = torch.zeros(mask_BC.shape)
    excluded_B = torch.tensor(excluded)
    return Experience(
        sequences_BS=torch.zeros(mask_BC.shape, dtype=torch.long), attention_mask_BS=mask_BC,
        position_ids_BS=torch.zeros(mask_BC.shape, dtype=torch.long), completion_ids_BC=torch.zeros(mask_BC.shape, dtype=torch.long),
        completion_mask_BC=mask_BC, loss_mask_BC=mask_BC & ~excluded_B[:, None], sampler_logprobs_BC=zeros,
        old_logprobs_BC=torch.tensor(old) if old is not None else zeros,
        ref_logprobs_BC=torch.tensor(ref) if ref is not None else zeros,
        rewards_B=torch.tensor(rewards), excluded_B=excluded_B,
    )


def test_ppo_token_rewards_are_minus_beta_kl_plus_the_score_at_the_last_token() -> None:
    objective = PPOObjective(rl_config("ppo", kl={"coef": 0.5, "estimator": "k1"}))
    batch = experience(
        rewards=[2.0, -1.0], excluded=[False, False], mask=[[1, 1, 1], [1, 1, 0]],
        old=[[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]], ref=[[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]],
    )
    rewards_BC, kl_BC = objective.token_rewards(batch)
    # k1 = old - ref: [0.5, -1, 0] and [1, 0, (padding)]
    assert kl_BC.tolist() == [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]
    assert rewards_BC.tolist() == [[-0.25, 0.5, 2.0], [-0.5, -1.0, 0.0]]


def test_ppo_advantages_are_gae_of_the_shaped_reward() -> None:
    config = rl_config(
        "ppo", kl={"coef": 0.0, "estimator": "k1"}, gamma=1.0, lam=1.0, whiten_advantages=False, normalize_reward=False
    )
    batch = experience(rewards=[1.0], excluded=[False], mask=[[1, 1, 1]])
    batch.old_values_BC = torch.tensor([[0.5, 0.25, 0.75]])
    PPOObjective(config).prepare(batch)
    # gamma = lam = 1: A_t = (sum of rewards from t) - V_t = 1 - V_t; returns = 1 everywhere
    assert torch.allclose(batch.advantages, torch.tensor([[0.5, 0.75, 0.25]]))
    assert torch.allclose(batch.returns_BC, torch.ones(1, 3))


def test_normalize_reward_by_hand() -> None:
    # mean 2, std 0.5 -> (3 - 2) / 0.5 = 2 and (1.5 - 2) / 0.5 = -1; a zero std only shifts
    assert normalize_reward(torch.tensor([3.0, 1.5]), 2.0, 0.5).tolist() == [2.0, -1.0]
    assert normalize_reward(torch.tensor([3.0]), 3.0, 0.0).tolist() == [0.0]


def test_ppo_normalises_rewards_with_the_first_batchs_constants() -> None:
    """Rewards 1, 3, 5 (and an excluded 100, left out): mean 3, unbiased std 2, so the first batch's sequence
    rewards become -1, 0, 1; a later batch reuses mean 3 and std 2 (7 -> 2); the constants survive a resume."""
    config = rl_config("ppo", kl={"coef": 0.0, "estimator": "k1"}, gamma=1.0, lam=1.0, whiten_advantages=False)
    objective = PPOObjective(config)
    first = experience(rewards=[1.0, 3.0, 5.0, 100.0], excluded=[False, False, False, True], mask=[[1, 1]] * 4)
    first.old_values_BC = torch.zeros(4, 2)
    objective.prepare(first)
    assert objective.reward_stats == pytest.approx((3.0, 2.0))
    # gamma = lam = 1 and values 0: the return at every token is the (normalised) sequence reward
    assert torch.allclose(first.returns_BC[:3], torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]))
    later = experience(rewards=[7.0], excluded=[False], mask=[[1, 1]])
    later.old_values_BC = torch.zeros(1, 2)
    resumed = PPOObjective(config)
    resumed.load_state_dict(objective.state_dict())
    resumed.prepare(later)
    assert torch.allclose(later.returns_BC, torch.tensor([[2.0, 2.0]]))


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo"])
def test_grpo_excluded_completion_is_left_out_of_its_group(advantage: str) -> None:
    objective = GRPOObjective(rl_config("grpo", group_size=3, advantage=advantage))
    # group 0: rewards 1, 0 and an excluded one (its 0.0 is not a real score); group 1: all equal
    batch = experience(rewards=[1.0, 0.0, 0.0, 0.5, 0.5, 0.5], excluded=[False, False, True, False, False, False],
                       mask=[[1, 1]] * 6)
    metrics = objective.prepare(batch)
    advantages = batch.advantages.tolist()
    # the excluded row takes the valid rows' mean (0.5), so the group is centred on 0.5, not on 1/3
    centred = [0.5, -0.5, 0.0]
    if advantage == "grpo":
        std = math.sqrt((0.25 + 0.25 + 0.0) / 2)
        expected = [c / (std + 1e-6) for c in centred]
    elif advantage == "dr_grpo":
        expected = centred
    else:  # leave-one-out: r_i - mean of the other two
        expected = [1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5]
    assert advantages[:3] == pytest.approx(expected, abs=1e-5)
    assert advantages[3:] == pytest.approx([0.0, 0.0, 0.0])
    assert metrics["zero_variance_groups"] == 0.5
    assert not batch.loss_mask_BC[2].any()
