"""RL stages inside a recipe: SFT -> GRPO with the math verifier and a held-out check, and SFT -> reward
model -> PPO scored by that reward model (`path: stage:rm`), on the micro model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.rewards import RewardEntry
from posttrain.rl.heldout import HeldoutEvaluation, RewardHackingWarning, fall_p_value
from posttrain.rl.prompts import encode_prompts, load_prompts
from posttrain.rl.reward import RewardScorer
from posttrain.rl.sampler import RolloutSampler, RowNoise, SamplingSettings, decode_completions, end_token_ids

RECIPE = """
name: rl-micro
seed: 0
model: {name_or_path: "builtin:micro"}
stages:
  - name: sft
    kind: sft
    data: {source: "builtin:arithmetic", count: 64, levels: [1]}
    train: {steps: 3, batch_size: 8, seq_len: 32, lr: 1.0e-3}
  - name: grpo
    kind: grpo
    data: {source: "builtin:arithmetic", count: 32, levels: [1]}
    reward:
      - source: math
        args: {workers: 1}
      - source: length_penalty
        args: {target_length: 2, max_length: 20}
        weight: 0.5
    group_size: 4
    generation: {max_new_tokens: 6}
    train: {steps: 2, prompts_per_step: 4, lr: 1.0e-3}
    heldout:
      data: {source: "builtin:arithmetic", split: test, count: 8, levels: [1, 2]}
      every: 1
      reward: [{source: math, args: {workers: 1}}]
      samples: 2
  - name: rm
    kind: reward_model
    from: sft
    data: {source: "builtin:preferences", count: 16, levels: [1]}
    train: {steps: 2, batch_size: 8, seq_len: 32, lr: 1.0e-3}
  - name: ppo
    kind: ppo
    from: sft
    data: {source: "builtin:arithmetic", count: 32, levels: [1]}
    reward:
      - source: reward_model
        args: {path: "stage:rm", batch_size: 16}
    generation: {max_new_tokens: 6}
    train: {steps: 2, prompts_per_step: 4, lr: 1.0e-3, epochs: 2}
evaluations:
  - name: arith
    kind: exact_match
    data: {source: "builtin:arithmetic", split: test, count: 8, levels: [1, 2]}
    max_new_tokens: 4
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, list[dict]]:
    folder = tmp_path_factory.mktemp("rl")
    (folder / "recipe.yaml").write_text(RECIPE)
    pipeline = Pipeline(load_recipe(folder / "recipe.yaml", [f"output_dir={folder / 'run'}"]), log=lambda _: None)
    return pipeline, pipeline.run()


def metrics(pipeline: Pipeline, stage: str) -> list[dict]:
    return [json.loads(line) for line in (pipeline.stage_dir(stage) / "metrics.jsonl").read_text().splitlines()]


def test_sft_then_grpo_runs_and_logs_per_source_rewards(run) -> None:
    pipeline, table = run
    assert [row["stage"] for row in table] == ["base", "sft", "grpo", "rm", "ppo"]
    initial, *rows = metrics(pipeline, "grpo")
    assert [row["step"] for row in rows] == [1, 2]
    # the starting policy is evaluated before the first step, by the gold verifier and by the stage's own
    # reward (math + length penalty, so not the gold one)
    assert initial["step"] == 0 and {"heldout/accuracy", "heldout/reward", "heldout/train_reward"} <= set(initial)
    assert {"heldout/sampled_accuracy", "heldout/sampled_reward"} <= set(initial)
    assert "heldout/hacking_warning" not in initial
    assert all("heldout/train_reward" in row for row in rows)
    for row in rows:
        for key in ("reward/math/mean", "reward/math/std", "reward/length_penalty/mean", "reward/total/mean", "kl",
                    "entropy", "clip_fraction", "response_length", "truncated_share", "tokens_per_s",
                    "heldout/accuracy", "heldout/hacking_warning"):
            assert key in row, key
        assert row["reward/math/weight"] == 1.0 and row["reward/length_penalty/weight"] == 0.5
    manifest = json.loads((pipeline.stage_dir("grpo") / "manifest.json").read_text())
    assert manifest["summary"]["steps"] == 2 and manifest["summary"]["prompts"] == 32
    assert manifest["summary"]["initial_heldout/accuracy"] == initial["heldout/accuracy"]
    config = json.loads((pipeline.stage_dir("grpo") / "checkpoint" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]


def test_ppo_is_scored_by_the_recipes_reward_model_stage(run) -> None:
    pipeline, _ = run
    rows = metrics(pipeline, "ppo")
    assert len(rows) == 2 and all("reward/reward_model/mean" in row and "value_loss" in row for row in rows)
    # a reward model scores every completion (no "wrong" status), with a real spread
    assert all(row["reward/reward_model/pass_rate"] == 1.0 and row["reward/reward_model/std"] > 0 for row in rows)
    assert not (pipeline.stage_dir("ppo") / "checkpoint" / "value_head.safetensors").exists()


def test_fall_p_value_is_the_exact_one_sided_sign_test() -> None:
    # by hand: P(X >= worse) for X ~ Binomial(worse + better, 1/2)
    assert fall_p_value(5, 0) == 1 / 32
    assert fall_p_value(6, 1) == (7 + 1) / 128
    assert fall_p_value(3, 3) == (20 + 15 + 6 + 1) / 64
    assert fall_p_value(0, 0) == 1.0 and fall_p_value(0, 4) == 1.0
    with pytest.raises(ValueError, match="flip counts"):
        fall_p_value(-1, 2)


def test_heldout_warns_when_training_reward_rises_and_accuracy_falls(micro, tmp_path: Path) -> None:
    model, tokenizer = micro
    rows = load_prompts(load_recipe_spec(), tmp_path, seed=0).rows
    kept, ids, _ = encode_prompts(tokenizer, rows, 64)
    never = RewardScorer([RewardEntry(source="format", args={"pattern": "impossible^"})], tmp_path, "cpu")
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
    heldout = HeldoutEvaluation(kept, ids, never, sampler, max_new_tokens=4, batch_size=4, every=5)
    assert [heldout.due(step, 12) for step in (3, 4, 9, 11)] == [False, True, True, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = heldout.evaluate(model, tokenizer, step=4, training_reward=0.0)  # nothing to compare with yet
    assert first["heldout/accuracy"] == 0.0 and first["heldout/hacking_warning"] == 0.0
    n = len(kept)
    assert n >= 5
    heldout.previous = (0.0, 0.5, [True] * 5 + [False] * (n - 5))  # 5 prompts right before, none now: p = 1/32
    with pytest.warns(RewardHackingWarning, match="training reward rose"):
        fell = heldout.evaluate(model, tokenizer, step=9, training_reward=1.0)
    assert fell["heldout/hacking_warning"] == 1.0 and fell["heldout/flips_worse"] == 5.0
    assert fell["heldout/fall_p_value"] == 1 / 32
    heldout.previous = (2.0, 0.5, [True] * 5 + [False] * (n - 5))  # the training reward fell too: no warning
    assert heldout.evaluate(model, tokenizer, step=11, training_reward=1.0)["heldout/hacking_warning"] == 0.0
    # a fall of 4 prompts (p = 1/16) is within chance at the default 0.05, and warns where any fall should
    heldout.previous = (0.0, 0.5, [True] * 4 + [False] * (n - 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert heldout.evaluate(model, tokenizer, step=11, training_reward=1.0)["heldout/hacking_warning"] == 0.0
    heldout.p_value = 1.0
    heldout.previous = (0.0, 0.5, [True] + [False] * (n - 1))
    with pytest.warns(RewardHackingWarning, match="1 prompts right before"):
        heldout.evaluate(model, tokenizer, step=11, training_reward=1.0)


def test_heldout_samples_score_sampled_answers_with_the_same_random_numbers(micro, tmp_path: Path) -> None:
    model, tokenizer = micro
    rows = load_prompts(load_recipe_spec(), tmp_path, seed=0).rows
    kept, ids, _ = encode_prompts(tokenizer, rows, 64)
    gold = RewardScorer([RewardEntry(source="format", args={"pattern": "[0-9]"})], tmp_path, "cpu")
    length = RewardScorer([RewardEntry(source="length_penalty", args={"target_length": 2, "max_length": 20})], tmp_path, "cpu")
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
    sampling = SamplingSettings(6, temperature=1.0)
    heldout = HeldoutEvaluation(
        kept, ids, gold, sampler, max_new_tokens=6, batch_size=4, every=1, train_reward=length, samples=3,
        sampling=sampling, seed=5,
    )
    first, again = heldout.evaluate_initial(model, tokenizer), heldout.evaluate_initial(model, tokenizer)
    assert first == again  # the same random numbers at every evaluation: only the policy changes the figures
    # by hand: 3 samples per prompt from one batch (the per-row streams make batching irrelevant)
    repeated = [prompt for prompt in ids for _ in range(3)]
    rollout = sampler.sample(model, repeated, sampling, noise=RowNoise(5, range(len(repeated))))
    texts = decode_completions(tokenizer, rollout.completion_ids_BC, rollout.completion_mask_BC)
    examples = [{**kept[i // 3].example, "truncated": cut} for i, cut in enumerate(rollout.truncated_B.tolist())]
    questions = [kept[i // 3].question for i in range(len(repeated))]
    expected = length(questions, texts, examples, 0).rewards_B.mean().item()
    assert first["heldout/sampled_reward"] == pytest.approx(expected)
    passed = gold.passed(gold(questions, texts, examples, 0))
    assert first["heldout/sampled_accuracy"] == pytest.approx(sum(passed) / len(passed))
    assert len(set(texts)) > len(kept)  # sampled, not greedy (greedy gives one answer per prompt)
    with pytest.raises(ValueError, match="temperature above 0"):
        HeldoutEvaluation(kept, ids, gold, sampler, 6, 4, 1, samples=2, sampling=SamplingSettings(6, temperature=0.0))


def load_recipe_spec():
    from posttrain.config.common import DataSpec

    return DataSpec(source="builtin:arithmetic", split="test", count=6, levels=[1, 2])
