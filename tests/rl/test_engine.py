"""The shared RL engine through the ppo and grpo stages on the micro model: updates change the weights,
the reference stays frozen, a simple reward goes up, micro-batching does not change the update, and bad
rewards stop the stage with a message that says what went wrong."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from posttrain.errors import NonFiniteLossError
from posttrain.rewards import RewardResult, RewardSource, register_reward_source
from posttrain.rl.reward import RewardSourceError
from posttrain.rl.sampler import Rollout
from tests.rl.conftest import rl_config, vary_lengths

STEP_METRICS = {
    "reward/total/mean", "reward/total/std", "reward/length_penalty/mean", "reward/length_penalty/std", "kl",
    "kl_coef", "entropy", "clip_fraction", "response_length", "truncated_share", "tokens_per_s", "time/generation",
    "time/scoring", "time/update", "grad_norm", "loss", "logprob_mismatch",
}


@register_reward_source("test_raises_on_digit_seven")
class RaisesOnSeven(RewardSource):
    """Fails on any completion containing a 7, so the error must point at that completion."""

    def score(self, prompts, completions, examples, step):
        if any("7" in completion for completion in completions):
            raise KeyError("seven")
        return [RewardResult(0.0, "ok", "") for _ in completions]


@register_reward_source("test_error_on_every_fourth")
class ErrorOnEveryFourth(RewardSource):
    """An infrastructure error on completions 3, 7, 11, ... of each batch; otherwise the length modulo 3."""

    def score(self, prompts, completions, examples, step):
        return [
            RewardResult(0.0, "error", "verifier unreachable") if index % 4 == 3 else RewardResult(float(len(c) % 3), "ok", "")
            for index, c in enumerate(completions)
        ]


@register_reward_source("test_not_a_number")
class NotANumber(RewardSource):
    def score(self, prompts, completions, examples, step):
        return [RewardResult(float("nan"), "ok", "") for _ in completions]


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())]


def test_grpo_step_updates_the_policy_and_logs_every_metric(make_stage) -> None:
    stage = make_stage(rl_config("grpo", kl={"coef": 0.1, "estimator": "k3"}))
    before = parameters(stage.model)
    summary = stage.train()
    assert len(changed(before, stage.model)) == len(before)
    [row] = stage.metrics.rows
    assert STEP_METRICS <= set(row), STEP_METRICS - set(row)
    assert row["zero_variance_groups"] < 1 and row["updates"] == 1
    assert row["logprob_mismatch"] < 1e-4  # the first update sees the weights that sampled
    assert summary["steps"] == 1 and summary["completion_tokens"] == row["completion_tokens"] > 0


def test_ppo_step_updates_policy_and_value_head_several_times(make_stage) -> None:
    stage = make_stage(rl_config("ppo", train={"epochs": 2, "mini_batches": 2}))
    before = parameters(stage.model)
    engine = stage.build_engine()
    head = engine.accelerator.unwrap_model(engine.module).value_head
    head_before = parameters(head)
    row = engine.step(0)
    assert len(changed(before, engine.policy)) == len(before)
    assert len(changed(head_before, head)) == 2
    assert row["updates"] == 4 and {"value_loss", "value_clip_fraction", "kl_penalty"} <= set(row)


def test_ppo_value_head_learns_at_its_own_rate(make_stage) -> None:
    """Adam's first step moves every parameter with a gradient by its group's rate: the value head by
    ``value_lr``, the policy by ``train.lr``."""
    config = rl_config("ppo", value_lr=1e-3, train={"lr": 1e-5, "schedule": "constant", "max_grad_norm": None})
    engine = make_stage(config).build_engine()
    head = engine.accelerator.unwrap_model(engine.module).value_head
    policy_before, head_before = parameters(engine.policy), parameters(head)
    engine.step(0)
    head_moves = torch.cat([(p.detach() - head_before[n]).abs().flatten() for n, p in head.named_parameters()])
    policy_moves = torch.cat([(p.detach() - policy_before[n]).abs().flatten() for n, p in engine.policy.named_parameters()])
    assert head_moves.max().item() == pytest.approx(1e-3, rel=1e-2)
    assert policy_moves.max().item() == pytest.approx(1e-5, rel=1e-2)
    assert sorted({group["lr"] for group in engine.optimizer.param_groups}) == pytest.approx([1e-5, 1e-3])


@pytest.mark.parametrize("lora", [False, True])
def test_ppo_reference_stays_frozen(make_stage, lora: bool) -> None:
    fields = {"lora": {"r": 4, "alpha": 8}} if lora else {}
    stage = make_stage(rl_config("ppo", train={"steps": 2, "epochs": 2}, **fields))
    start = copy.deepcopy(stage.model)
    engine = stage.build_engine()
    reference = engine.reference
    for step in range(2):
        engine.step(step)
    inputs = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mask = torch.ones_like(inputs, dtype=torch.bool)
    completion = inputs[:, 3:]
    batch = Rollout(inputs[:, :3], mask[:, :3], completion, mask[:, 3:], torch.zeros(1, 3), torch.tensor([True]))
    ref = reference.logprobs(engine.policy, batch, 1.0)
    with torch.no_grad():
        logits = start(input_ids=inputs).logits[:, 2:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1)
    assert torch.allclose(ref, expected, atol=1e-5)
    policy_now = engine.policy(input_ids=inputs).logits[:, 2:-1]
    assert not torch.allclose(torch.log_softmax(policy_now, -1).gather(-1, completion[..., None]).squeeze(-1), expected, atol=1e-4)
    if not lora:
        assert not any(p.requires_grad for p in reference.model.parameters())
        assert not changed(parameters(start), reference.model)


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_dropout_is_off_so_the_first_ratio_is_one(make_stage, kind) -> None:
    """Issue 22, defect 5: with dropout in the model (attention dropout 0.5 here) or its LoRA adapters (0.5,
    which acts once the adapters are no longer 0, from the second step), the training-mode forward of a step's
    first update disagreed with the sampler: ratio != 1, the clip acting on noise. Dropout is now off in RL,
    as TRL does by default."""
    stage = make_stage(rl_config(kind, lora={"r": 4, "alpha": 8, "dropout": 0.5}, train={"steps": 2}))
    for module in stage.model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.5
    engine = stage.build_engine()
    for step in range(2):
        row = engine.step(step)
        assert row["logprob_mismatch"] < 1e-5, step
        assert row["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and row["ratio_max"] == pytest.approx(1.0, abs=1e-5)


def test_grpo_raises_a_simple_reward(make_stage) -> None:
    # shorter completions score higher; 12 steps of GRPO must make answers measurably shorter
    stage = make_stage(rl_config("grpo", group_size=8, generation={"max_new_tokens": 8}, train={"steps": 12}))
    stage.train()
    rewards = [row["reward/total/mean"] for row in stage.metrics.rows]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.1, rewards


AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
OBJECTIVES = [
    *[("ppo", {}, aggregation) for aggregation in AGGREGATIONS],
    *[("grpo", {"kl": {"coef": 0.1, "estimator": "k3"}}, aggregation) for aggregation in AGGREGATIONS],
    ("grpo", {"policy_loss": "gspo", "clip_eps": 3e-4, "clip_eps_high": 4e-4}, "seq-mean-token-mean"),
    ("grpo", {"policy_loss": "cispo", "clip_eps": 1.0, "clip_eps_high": 4.0}, "token-mean"),
    ("grpo", {"advantage": "reinforce_pp_baseline"}, "token-mean"),
    ("grpo", {"advantage": "dr_grpo"}, "seq-mean-token-sum-norm"),
]


@pytest.mark.parametrize("kind, fields, aggregation", OBJECTIVES, ids=lambda value: str(value))
def test_micro_batches_accumulate_to_the_same_update(make_stage, kind, fields, aggregation) -> None:
    """The same rollouts (same seed) as one pass or as micro-batches of 3 and 3 + 2 completions... give the same
    loss, gradient norm and (PPO) value loss, for every objective and aggregation. Issue 22, defect 2: PPO's
    value loss was token-averaged while the engine weighted micro-batches by their share of sequences, so with
    a sequence-mean aggregation value_loss was 0.0801 whole and 0.1140 with micro_batch_size 3."""
    rows = []
    for micro in (None, 3):
        stage = make_stage(rl_config(kind, loss_aggregation=aggregation, train={"micro_batch_size": micro}, **fields))
        engine = stage.build_engine()
        vary_lengths(engine)  # lengths 1..6: micro-batches of unequal token counts
        rows.append(engine.step(0))
    whole, split = rows
    assert whole["completion_tokens"] == split["completion_tokens"] and whole["response_length"] < 6
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-7)
    assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
    if kind == "ppo":
        assert split["value_loss"] == pytest.approx(whole["value_loss"], rel=1e-5, abs=1e-7)
        assert split["policy_loss"] == pytest.approx(whole["policy_loss"], rel=1e-5, abs=1e-7)


def test_grpo_kl_coefficient_enters_the_loss(make_stage) -> None:
    """beta > 0 is run, not only configured. Step 1: the policy is the reference, the k3 KL and its gradient
    are 0, so both runs make the same update; step 2 samples the same completions (same weights, same noise)
    and, with token-mean aggregation, the loss differs by exactly beta * (token-mean KL)."""
    rows = {}
    for beta in (0.0, 0.5):
        stage = make_stage(rl_config("grpo", kl={"coef": beta, "estimator": "k3"}, train={"steps": 2}))
        stage.train()
        rows[beta] = stage.metrics.rows
    assert rows[0.5][0]["loss"] == pytest.approx(rows[0.0][0]["loss"], abs=1e-6)
    without, with_kl = rows[0.0][1], rows[0.5][1]
    assert with_kl["response_length"] == without["response_length"] and with_kl["kl"] > 1e-4
    assert with_kl["loss"] - without["loss"] == pytest.approx(0.5 * with_kl["kl"], rel=1e-3)
    assert with_kl["kl_coef"] == 0.5


def test_reference_logprobs_are_those_of_the_sampling_temperature(make_stage, updates) -> None:
    """At step 1 the reference is the policy that sampled: at temperature 0.5 its log-probabilities are the
    sampler's (those of logits / 0.5), not those at temperature 1."""
    make_stage(rl_config("grpo", generation={"temperature": 0.5})).build_engine().step(0)
    [batch] = updates
    gap_BC = (batch.ref_logprobs_BC - batch.sampler_logprobs_BC).abs()
    assert float(gap_BC[batch.completion_mask_BC].max()) < 1e-4


def test_completions_with_a_reward_error_are_out_of_the_loss_and_their_group(make_stage, updates) -> None:
    """A reward source's infrastructure error on a completion (here every fourth) excludes it, through the
    engine: no loss on its tokens, advantage 0, and its group's statistics come from the other three."""
    stage = make_stage(rl_config("grpo", reward=[{"source": "test_error_on_every_fourth", "allow_truncated": True}]))
    row = stage.build_engine().step(0)
    [batch] = updates
    expected = torch.tensor([index % 4 == 3 for index in range(16)])
    assert torch.equal(batch.excluded_B.cpu(), expected)
    assert not batch.loss_mask_BC[expected].any()
    assert torch.equal(batch.loss_mask_BC[~expected], batch.completion_mask_BC[~expected])
    assert batch.advantages[expected].abs().max() == 0
    assert row["updates"] == 1


def test_adaptive_kl_controller_moves_beta(make_stage) -> None:
    kl = {"coef": 0.1, "estimator": "k1", "controller": "adaptive", "target": 100.0, "horizon": 10}
    stage = make_stage(rl_config("ppo", kl=kl, train={"steps": 3}))
    stage.train()
    coefs = [row["kl_coef"] for row in stage.metrics.rows]
    # the KL is far below target: beta shrinks by the clipped 20% * n/horizon each step
    assert coefs[0] == pytest.approx(0.1) and coefs[1] < coefs[0] and coefs[2] < coefs[1]


def test_adaptive_kl_counts_the_global_batch(make_stage) -> None:
    """Issue 22, defect 4: with N processes the controller's n_steps is the global batch, not the local one.
    Two processes holding the same rows (the collective doubles every sum): KL per completion 2 nats against
    target 1 -> error clipped to 0.2; 2 x 4 completions over horizon 10: beta 0.1 * (1 + 0.2 * 8 / 10)."""
    kl = {"coef": 0.1, "estimator": "k1", "controller": "adaptive", "target": 1.0, "horizon": 10}
    engine = make_stage(rl_config("ppo", kl=kl)).build_engine()
    engine._sum = lambda values: 2 * values
    kl_BC = torch.tensor([[1.0, 1.0, 5.0]] * 4)
    mask_BC = torch.tensor([[True, True, False]] * 4)
    engine._update_kl_coef(kl_BC, mask_BC)
    assert engine.kl_controller.kl_coef == pytest.approx(0.1 * (1 + 0.2 * 8 / 10))


def test_a_raising_reward_source_names_itself_and_the_completion(make_stage) -> None:
    config = rl_config("grpo", reward=[{"source": "test_raises_on_digit_seven", "name": "sevens"}],
                       generation={"max_new_tokens": 16}, train={"prompts_per_step": 8})
    stage = make_stage(config)
    with pytest.raises(RewardSourceError, match=r"reward source 'sevens' raised KeyError: 'seven' on completion \d+ '[^']*7"):
        stage.train()


def test_nonfinite_reward_stops_the_stage_and_keeps_the_last_good_policy(make_stage, tmp_path) -> None:
    stage = make_stage(rl_config("grpo", reward=[{"source": "test_not_a_number"}]))
    before = parameters(stage.model)
    with pytest.raises(NonFiniteLossError, match="non-finite advantages at step 1.*last_good"):
        stage.train()
    saved = tmp_path / "stages" / "grpo" / "last_good"
    assert (saved / "config.json").is_file()
    assert not changed(before, stage.model)
    assert json.loads((saved / "config.json").read_text())["model_type"] == "qwen2"
