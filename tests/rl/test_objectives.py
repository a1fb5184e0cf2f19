"""PPO's KL-shaped token rewards and GRPO's handling of excluded completions, against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from posttrain.algorithms import kl_estimate
from posttrain.rl.objective import Experience, local_sum
from posttrain.stages.grpo import GRPOObjective
from posttrain.stages.ppo import PPOObjective, normalize_reward, token_rewards
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


def prepare(objective, batch: Experience):
    """The objective's advantages hook as the engine calls it on one process (beta 0 unless the config sets it)."""
    kl_BC = kl_estimate(batch.old_logprobs_BC, batch.ref_logprobs_BC, objective.config.kl.estimator)
    return objective.advantages(batch, kl_BC, objective.config.kl.coef, local_sum)


def test_ppo_token_rewards_are_minus_beta_kl_plus_the_score_at_the_last_token() -> None:
    batch = experience(
        rewards=[2.0, -1.0], excluded=[False, False], mask=[[1, 1, 1], [1, 1, 0]],
        old=[[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]], ref=[[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]],
    )
    kl_BC = kl_estimate(batch.old_logprobs_BC, batch.ref_logprobs_BC, "k1")
    rewards_BC, kl_BC = token_rewards(batch, kl_BC, 0.5)
    # k1 = old - ref: [0.5, -1, 0] and [1, 0, (padding)]
    assert kl_BC.tolist() == [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]
    assert rewards_BC.tolist() == [[-0.25, 0.5, 2.0], [-0.5, -1.0, 0.0]]


def test_ppo_advantages_are_gae_of_the_shaped_reward() -> None:
    config = rl_config(
        "ppo", kl={"coef": 0.0, "estimator": "k1"}, gamma=1.0, lam=1.0, whiten_advantages=False, normalize_reward=False
    )
    batch = experience(rewards=[1.0], excluded=[False], mask=[[1, 1, 1]])
    batch.old_values_BC = torch.tensor([[0.5, 0.25, 0.75]])
    result = prepare(PPOObjective(config), batch)
    # gamma = lam = 1: A_t = (sum of rewards from t) - V_t = 1 - V_t; returns = 1 everywhere
    assert torch.allclose(result.advantages, torch.tensor([[0.5, 0.75, 0.25]]))
    assert torch.allclose(result.returns_BC, torch.ones(1, 3))


def test_ppo_whitens_the_advantages_by_hand() -> None:
    """GAE gives (0.5, 0.75, 0.25) here (see above): mean 0.5, unbiased std 0.25, so whitened (0, 1, -1);
    neither the raw values nor twice the whitened ones pass."""
    config = rl_config("ppo", kl={"coef": 0.0, "estimator": "k1"}, gamma=1.0, lam=1.0, normalize_reward=False)
    batch = experience(rewards=[1.0], excluded=[False], mask=[[1, 1, 1]])
    batch.old_values_BC = torch.tensor([[0.5, 0.25, 0.75]])
    result = prepare(PPOObjective(config), batch)
    assert result.advantages.tolist()[0] == pytest.approx([0.0, 1.0, -1.0], abs=1e-6)
    assert torch.allclose(result.returns_BC, torch.ones(1, 3))  # returns are not whitened


@pytest.mark.parametrize("value_coef", [0.1, 0.7])
def test_ppo_loss_is_policy_loss_plus_value_coef_times_value_loss(value_coef: float) -> None:
    """Ratio 1 and advantages (2, -1): policy loss (-2 + 1) / 2 = -0.5 (token-mean); values (1, 2) against
    returns (0, 0), equal to their rollout-time values (no clipping): value loss 0.5 * (1 + 4) / 2 = 1.25."""
    config = rl_config("ppo", value_coef=value_coef)
    batch = experience(rewards=[0.0], excluded=[False], mask=[[1, 1]], old=[[-1.0, -2.0]])
    batch.advantages = torch.tensor([[2.0, -1.0]])
    batch.old_values_BC = torch.tensor([[1.0, 2.0]])
    batch.returns_BC = torch.zeros(1, 2)
    scores = SimpleNamespace(logprobs_BC=torch.tensor([[-1.0, -2.0]]), values_BC=torch.tensor([[1.0, 2.0]]))
    loss, metrics = PPOObjective(config).loss(batch, scores, kl_coef=0.0)
    assert float(metrics["policy_loss"]) == pytest.approx(-0.5)
    assert float(metrics["value_loss"]) == pytest.approx(1.25)
    assert float(loss) == pytest.approx(-0.5 + value_coef * 1.25)


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
    first_result = prepare(objective, first)
    assert objective.reward_stats == pytest.approx((3.0, 2.0))
    # gamma = lam = 1 and values 0: the return at every token is the (normalised) sequence reward
    assert torch.allclose(first_result.returns_BC[:3], torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]))
    later = experience(rewards=[7.0], excluded=[False], mask=[[1, 1]])
    later.old_values_BC = torch.zeros(1, 2)
    resumed = PPOObjective(config)
    resumed.load_state_dict(objective.state_dict())
    assert torch.allclose(prepare(resumed, later).returns_BC, torch.tensor([[2.0, 2.0]]))


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_grpo_excluded_completion_is_left_out_of_its_group(advantage: str) -> None:
    """Issue 22, defect 3: an excluded completion (its 9.0 is not a real score) takes no part in its group's
    statistics, gets advantage 0 and no loss."""
    objective = GRPOObjective(rl_config("grpo", group_size=4, advantage=advantage))
    batch = experience(rewards=[1.0, 0.0, 0.0, 9.0, 0.5, 0.5, 0.5, 0.5], excluded=[False, False, False, True] + [False] * 4,
                       mask=[[1, 1]] * 8)
    result = prepare(objective, batch)
    metrics, advantages = result.metrics, result.advantages.tolist()
    # valid (1, 0, 0): mean 1/3, unbiased std sqrt(1/3) -- not the imputed (1, 0, 0, 1/3)'s (1.414, -0.707, ...)
    expected = {
        "grpo": [1.154700, -0.577350, -0.577350, 0.0],
        "dr_grpo": [2 / 3, -1 / 3, -1 / 3, 0.0],
        "rloo": [1.0, -0.5, -0.5, 0.0],  # r_i - mean of the other valid two
        "reinforce_pp_baseline": [2.0, -1.0, -1.0, 0.0],  # centred / batch std over the 7 valid rows (1/3)
    }[advantage]
    assert advantages[:4] == pytest.approx(expected, abs=1e-5)
    # float32: the valid centred rewards (2/3, -1/3, -1/3) sum to ~2e-8, not 0, in the batch mean
    assert advantages[4:] == pytest.approx([0.0] * 4, abs=1e-7)
    assert metrics["zero_variance_groups"] == 0.5
    assert not batch.loss_mask_BC[3].any()


def test_a_users_estimator_without_valid_b_sees_the_group_mean_and_its_excluded_row_gets_zero(tmp_path) -> None:
    (tmp_path / "mine.py").write_text("def centred(rewards_B, group_size):\n"
                                      "    return rewards_B - rewards_B.view(-1, group_size).mean(1).repeat_interleave(group_size)\n")
    objective = GRPOObjective(rl_config("grpo", group_size=3, advantage="mine.py:centred"), recipe_dir=tmp_path)
    batch = experience(rewards=[1.0, 0.0, 9.0], excluded=[False, False, True], mask=[[1]] * 3)
    assert prepare(objective, batch).advantages.tolist() == [0.5, -0.5, 0.0]


def test_a_recipe_names_its_own_advantage_and_loss_from_files(tmp_path) -> None:
    """`advantage: file.py:function` and `policy_loss: file.py:function` (relative to the recipe) are what the
    objective calls; the engine's arguments reach them by keyword."""
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "def doubled(rewards_B, group_size):\n"
        "    return 2 * (rewards_B - rewards_B.view(-1, group_size).mean(dim=1).repeat_interleave(group_size))\n"
        "def constant(**keywords):\n"
        "    return torch.tensor(7.0), {'beta_seen': torch.tensor(keywords['beta'])}\n"
    )
    config = rl_config("grpo", group_size=2, advantage="mine.py:doubled", policy_loss="mine.py:constant")
    objective = GRPOObjective(config, recipe_dir=tmp_path)
    batch = experience(rewards=[1.0, 0.0, 3.0, 3.0], excluded=[False] * 4, mask=[[1, 1]] * 4)
    assert prepare(objective, batch).advantages.tolist() == [1.0, -1.0, 0.0, 0.0]
    loss, metrics = objective.loss(batch, scores=type("Scores", (), {"logprobs_BC": torch.zeros(4, 2)})(), kl_coef=0.25)
    assert float(loss) == 7.0 and float(metrics["beta_seen"]) == 0.25


def test_a_file_function_without_the_stages_keywords_is_refused_before_training(tmp_path) -> None:
    (tmp_path / "mine.py").write_text("def tokenwise(rewards_BT, values_BT, mask_BT, gamma, lam):\n    return None\n")
    with pytest.raises(ValueError, match="advantage estimator 'mine.py:tokenwise' does not take rewards_B, group_size"):
        GRPOObjective(rl_config("grpo", advantage="mine.py:tokenwise"), recipe_dir=tmp_path)
    with pytest.raises(ValueError, match="policy loss 'missing.py:loss': .*not found"):
        GRPOObjective(rl_config("grpo", policy_loss="missing.py:loss"), recipe_dir=tmp_path)


@pytest.mark.parametrize("kind, field, value, message", [
    ("grpo", "advantage", "gae", "calls 'outcome' ones: dr_grpo, grpo, reinforce_pp, reinforce_pp_baseline, rloo"),
    ("ppo", "advantage", "rloo", "calls 'token' ones: gae"),
    ("ppo", "policy_loss", "clipped", "unknown policy loss 'clipped'; valid: cispo, grpo, gspo, ppo_clip"),
])
def test_the_schema_checks_names_against_the_registries(kind: str, field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rl_config(kind, **{field: value})


@pytest.mark.parametrize("fields, message", [
    ({"policy_loss": "cispo", "dual_clip": 3.0}, "dual_clip does not apply to policy_loss cispo"),
    ({"dapo": {"overlong_buffer": 7}}, r"dapo.overlong_buffer \(7\) is longer than generation.max_new_tokens \(6\)"),
])
def test_the_schema_refuses_settings_an_objective_cannot_use(fields, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rl_config("grpo", **fields)

