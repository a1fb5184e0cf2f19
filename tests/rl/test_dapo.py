"""DAPO in the RL engine (`dapo:` of a grpo stage): dynamic sampling drops groups whose rewards are all equal
and refills the batch from further prompts up to a cap, overlong filtering keeps truncated completions out of
the loss, and the overlong punishment is added to the reward."""

from __future__ import annotations

import zlib

import pytest
import torch

from posttrain.rewards import RewardResult, RewardSource, register_reward_source
from tests.rl.conftest import rl_config, vary_lengths


@register_reward_source("test_half_the_prompts_constant")
class HalfConstant(RewardSource):
    """0 for every completion of a prompt with an even checksum (a group with no signal), else the completion's
    length modulo 3 (groups whose rewards differ)."""

    def score(self, prompts, completions, examples, step):
        return [
            RewardResult(0.0 if zlib.crc32(prompt.encode()) % 2 == 0 else float(len(completion) % 3), "ok", "")
            for prompt, completion in zip(prompts, completions)
        ]


@register_reward_source("test_zero")
class Zero(RewardSource):
    def score(self, prompts, completions, examples, step):
        return [RewardResult(0.0, "ok", "") for _ in completions]


def test_dynamic_sampling_refills_the_batch_with_informative_groups(make_stage, updates) -> None:
    config = rl_config("grpo", reward=[{"source": "test_half_the_prompts_constant", "allow_truncated": True}], train={"prompts_per_step": 4},
                       dapo={"max_extra_rounds": 4, "overlong_filter": False})
    row = make_stage(config).build_engine().step(0)
    [experience] = updates
    assert row["dapo/dropped_groups"] >= 1 and row["dapo/extra_rounds"] >= 1  # this seed's first round had some
    assert row["dapo/extra_completions"] == row["dapo/extra_rounds"] * 4 * 4 and row["dapo/filler_groups"] == 0
    assert row["zero_variance_groups"] == 0.0  # every kept group has a signal
    assert experience.rewards_B.shape == (16,) and bool(experience.loss_mask_BC.any(dim=1).all())


def test_dynamic_sampling_stops_at_the_cap_and_trains_on_nothing_without_signal(make_stage, updates) -> None:
    config = rl_config("grpo", reward=[{"source": "test_zero", "allow_truncated": True}], dapo={"max_extra_rounds": 2, "overlong_filter": False})
    stage = make_stage(config)
    engine = stage.build_engine()
    before = {name: p.detach().clone() for name, p in engine.policy.named_parameters()}
    row = engine.step(0)
    assert row["dapo/extra_rounds"] == 2 and row["dapo/extra_completions"] == 2 * 4 * 4
    assert row["dapo/dropped_groups"] == 3 * 4 and row["dapo/filler_groups"] == 4
    [experience] = updates
    assert not experience.loss_mask_BC.any() and row["updates"] == 0
    assert all(torch.equal(before[name], p.detach()) for name, p in engine.policy.named_parameters())


def test_overlong_filter_keeps_truncated_completions_in_the_statistics_but_out_of_the_loss(make_stage, updates) -> None:
    config = rl_config("grpo", group_size=6, dapo={"dynamic_sampling": False})
    engine = make_stage(config).build_engine()
    vary_lengths(engine)  # row i keeps i % 6 + 1 tokens; the rows that keep all 6 are truncated
    row = engine.step(0)
    [experience] = updates
    # rows that kept all 6 tokens without sampling an end token (the micro model ends a few rows by itself)
    truncated_B = experience.completion_mask_BC.sum(dim=1) == 6
    assert int(truncated_B.sum()) >= 2 and row["dapo/overlong_filtered"] == int(truncated_B.sum())
    assert not experience.loss_mask_BC[truncated_B].any()
    assert torch.equal(experience.loss_mask_BC[~truncated_B], experience.completion_mask_BC[~truncated_B])
    # the truncated completion still counts in its group: its advantage is not 0 (shorter is better: it is worst)
    assert bool((experience.advantages[truncated_B] < 0).all())


def test_overlong_punishment_is_added_to_the_reward(make_stage, updates) -> None:
    # max_new_tokens 6, buffer 3: lengths 1..6 get 0, 0, 0, -1/3, -2/3, -1
    config = rl_config("grpo", group_size=6, reward=[{"source": "test_zero", "allow_truncated": True}],
                       dapo={"dynamic_sampling": False, "overlong_filter": False, "overlong_buffer": 3})
    engine = make_stage(config).build_engine()
    vary_lengths(engine)
    engine.step(0)
    [experience] = updates
    penalty = {1: 0.0, 2: 0.0, 3: 0.0, 4: -1 / 3, 5: -2 / 3, 6: -1.0}
    lengths = experience.completion_mask_BC.sum(dim=1).tolist()
    assert set(lengths) == set(penalty)
    torch.testing.assert_close(experience.rewards_B, torch.tensor([penalty[length] for length in lengths]))
