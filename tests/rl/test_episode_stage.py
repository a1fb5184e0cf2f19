"""RL stages with an `environment:`: a GRPO and a PPO step on calculator episodes train on the model's
tokens only, log the per-episode metrics, exclude failed episodes, and held-out answers are episodes."""

from __future__ import annotations

import pytest
import torch

from posttrain.rl.episodes import EpisodeRollout
from tests.rl.conftest import end_turns_early, rl_config

EPISODE_METRICS = {
    "episodes/turns", "episodes/tool_calls", "episodes/tool_errors", "episodes/length", "episodes/truncated",
    "episodes/failed",
}  # fmt: skip


def calculator_config(kind: str, **fields):
    defaults = {
        "data": {"source": "builtin:calculator", "count": 16, "levels": [4, 5]},
        "environment": {"name": "builtin:calculator", "max_turns": 3, "max_episode_tokens": 24},
        "reward": [{"source": "environment"}, {"source": "math", "args": {"workers": 1}, "weight": 0.0}],
    }
    return rl_config(kind, **{**defaults, **fields})


TWO_TURNS = '''
from posttrain.envs import Environment, StepResult

class TwoTurns(Environment):
    """A tool result after the first message; the second ends the episode (reward: its length is odd)."""

    def step(self, message):
        if not getattr(self, "answered", False):
            self.answered = True
            return StepResult([{"role": "tool", "content": self.example["answer"]}], done=False, tool_calls=1)
        return StepResult([], done=True, reward=float(len(message) % 2))
'''
TWO_TURNS_SPEC = {"name": "two_turns.py:TwoTurns", "max_turns": 3, "max_episode_tokens": 24}


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_rl_step_on_episodes(make_stage, kind, tmp_path) -> None:
    (tmp_path / "two_turns.py").write_text(TWO_TURNS)
    stage = make_stage(calculator_config(kind, environment=TWO_TURNS_SPEC))
    end_turns_early(stage.model, stage.tokenizer)
    engine = stage.build_engine()
    rows, rollout = engine._rollout(0)
    assert isinstance(rollout, EpisodeRollout) and len(rollout.episodes) == len(rows) == 4 * engine.group_size
    row = engine.step(0)
    assert EPISODE_METRICS <= set(row), EPISODE_METRICS - set(row)
    assert row["episodes/turns"] > 1 and row["episodes/tool_calls"] > 0 and row["updates"] >= 1
    assert row["logprob_mismatch"] < 1e-4  # over the model's tokens, the weights that sampled


def test_experience_masks_follow_the_models_tokens(make_stage, tmp_path) -> None:
    (tmp_path / "two_turns.py").write_text(TWO_TURNS)
    stage = make_stage(calculator_config("grpo", environment=TWO_TURNS_SPEC))
    end_turns_early(stage.model, stage.tokenizer)
    engine = stage.build_engine()
    rows, rollout = engine._rollout(0)
    assert max(e.turns for e in rollout.episodes) >= 2  # some episodes hold environment tokens
    excluded = torch.zeros(len(rows), dtype=torch.bool)
    excluded[1] = True
    experience = engine._experience(rollout, torch.zeros(len(rows)), excluded, torch.zeros_like(excluded))
    assert torch.equal(experience.loss_mask_BC, rollout.sampled_mask_BC & ~excluded[:, None])
    assert torch.equal(experience.sampled_mask_BC, rollout.sampled_mask_BC)
    environment_tokens = rollout.completion_mask_BC & ~rollout.sampled_mask_BC
    assert (experience.ref_logprobs_BC[environment_tokens] == 0).all()
    assert (experience.old_logprobs_BC[environment_tokens] == 0).all()


def test_failed_episodes_are_excluded_and_counted(make_stage, tmp_path) -> None:
    (tmp_path / "broken.py").write_text(
        "from posttrain.envs import Environment\n\n"
        "class Broken(Environment):\n"
        "    def reset(self, example):\n"
        "        if int(example['answer']) % 2:\n"
        "            raise RuntimeError('odd')\n"
        "        return super().reset(example)\n"
        "    def step(self, message):\n"
        "        return None\n"
    )
    config = calculator_config("grpo", environment={"name": "broken.py:Broken", "max_turns": 2, "max_episode_tokens": 24})
    stage = make_stage(config)
    engine = stage.build_engine()
    rows, rollout = engine._rollout(0)
    odd = [int(row.example["answer"]) % 2 == 1 for row in rows]
    assert 0 < sum(odd) < len(rows)
    assert rollout.failed_B.tolist() == [True if o else e.failure is not None for o, e in zip(odd, rollout.episodes)]
    assert all("RuntimeError: odd" in e.failure for o, e in zip(odd, rollout.episodes) if o)
    row = engine.step(0)  # the same rollout again (its random numbers are a function of the step)
    assert row["episodes/failed"] == float(rollout.failed_B.sum())
    excluded = rollout.failed_B
    experience = engine._experience(rollout, torch.zeros(len(rows)), excluded, torch.zeros_like(excluded))
    assert not experience.loss_mask_BC[excluded].any()


def test_heldout_answers_are_episodes(make_stage) -> None:
    config = calculator_config(
        "grpo", heldout={"data": {"source": "builtin:calculator", "split": "test", "count": 8}, "reward": [{"source": "math", "args": {"workers": 1}}]}
    )
    stage = make_stage(config)
    engine = stage.build_engine()
    metrics = engine.heldout.evaluate_initial(engine.policy, engine.tokenizer)
    assert 0.0 <= metrics["heldout/accuracy"] <= 1.0
    assert len(engine.heldout.last_episodes) == 8
    assert all(episode.messages[0]["role"] == "user" for episode in engine.heldout.last_episodes)
    called = [episode.tool_calls > 0 for episode in engine.heldout.last_episodes]
    assert metrics["heldout/tool_call_share"] == sum(called) / 8


def test_heldout_samples_leave_the_greedy_episodes_for_the_report(make_stage) -> None:
    heldout = {"data": {"source": "builtin:calculator", "split": "test", "count": 4}, "samples": 2,
               "reward": [{"source": "math", "args": {"workers": 1}}]}  # fmt: skip
    engine = make_stage(calculator_config("grpo", heldout=heldout)).build_engine()
    engine.heldout.evaluate_initial(engine.policy, engine.tokenizer)
    assert len(engine.heldout.last_episodes) == 4
