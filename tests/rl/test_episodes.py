"""Multi-turn episodes, token by token: the model's sampled tokens are kept exactly, the environment's
tokens are the chat template's rendering of the observation, and only the model's tokens carry log-probs,
reference log-probs, values, KL and loss."""

from __future__ import annotations

import copy

import pytest
import torch

from posttrain.algorithms import kl_estimate
from posttrain.algorithms.policy_losses import grpo_loss
from posttrain.config.environment import EnvironmentSpec
from posttrain.envs import Environment, StepResult
from posttrain.rl.episodes import EpisodeRunner, ObservationEncoder
from posttrain.rl.policy import ActorCritic, FrozenReference, ValueHead, score_completions
from posttrain.rl.prompts import PromptRow
from posttrain.rl.sampler import RolloutSampler, RowNoise, SamplingSettings
from tests.rl.conftest import end_turns_early

QUESTION = "What is 71 - 28?"
OBSERVATION_TEXT = "<|tool|>43<|end|><|assistant|>"  # the tiny template's tool message, then the next prompt


class TwoTurns(Environment):
    """Answers the first message with a tool result, ends the episode on the second (reward 1)."""

    def step(self, message: str) -> StepResult:
        if not hasattr(self, "answered"):
            self.answered = True
            return StepResult([{"role": "tool", "content": "43"}], done=False, tool_calls=1)
        return StepResult([], done=True, reward=1.0)


class Raises(Environment):
    def step(self, message: str) -> StepResult:
        raise RuntimeError("broken environment")


class Malformed(Environment):
    def step(self, message: str) -> StepResult:
        return {"messages": []}  # type: ignore[return-value]


class Slow(Environment):
    def step(self, message: str) -> StepResult:
        import time

        time.sleep(0.5)
        return StepResult([], done=True)


def _runner(tokenizer, sampler, environment: type, tmp_path, **limits) -> EpisodeRunner:
    """A runner of the test's own environment class (loading by name is tested in tests/envs)."""
    spec = EnvironmentSpec(name="builtin:calculator", **limits)
    runner = EpisodeRunner(spec, tokenizer, sampler, max_prompt_tokens=128)
    runner.environment_class = environment
    return runner


@pytest.fixture
def ending_model(micro):
    """The micro model with turns that end within a few sampled tokens (`end_turns_early`)."""
    model, tokenizer = micro
    model = copy.deepcopy(model)
    end_turns_early(model, tokenizer)
    return model.eval(), tokenizer


def _prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_observation_tokens_are_the_templates_rendering(micro) -> None:
    _, tokenizer = micro
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    encoder = ObservationEncoder(tokenizer, [end])
    assert encoder.text([{"role": "tool", "content": "43"}]) == OBSERVATION_TEXT
    assert encoder([{"role": "tool", "content": "43"}]) == tokenizer(OBSERVATION_TEXT, add_special_tokens=False)["input_ids"]


def test_two_turn_episode_token_by_token(ending_model, tmp_path) -> None:
    model, tokenizer = ending_model
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    sampler = RolloutSampler([end], tokenizer.pad_token_id, "cached")
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0)
    runner = _runner(tokenizer, sampler, TwoTurns, tmp_path, max_turns=3, max_episode_tokens=64)
    row = PromptRow([{"role": "user", "content": QUESTION}], QUESTION, {"answer": "43"})
    # the first seed whose episode has two complete turns (deterministic: the draws are a hash of the seed)
    for seed in range(50):
        rollout = runner.run(model, [row], settings, RowNoise(seed, [0]))
        episode = rollout.episodes[0]
        if episode.done and episode.turns == 2 and episode.tokens.index(end) >= 1:
            break
    else:
        pytest.fail("no seed gave a two-turn episode")

    # what the episode must be, rebuilt from the sampler directly: turn 1 from the prompt, the observation
    # as the template renders it, turn 2 from everything before it (each turn with its own random stream)
    prompt = _prompt_ids(tokenizer)
    assert episode.prompt_ids == prompt
    first = sampler.sample(model, [prompt], settings, noise=RowNoise((seed * 1_000_003 + 0) & 0x7FFFFFFF, [0]))
    turn1 = first.completion_ids_BC[0, : int(first.lengths_B[0])].tolist()
    logprobs1 = first.logprobs_BC[0, : int(first.lengths_B[0])].tolist()
    observation = tokenizer(OBSERVATION_TEXT, add_special_tokens=False)["input_ids"]
    second = sampler.sample(
        model, [prompt + turn1 + observation], settings, noise=RowNoise((seed * 1_000_003 + 1) & 0x7FFFFFFF, [0])
    )
    turn2 = second.completion_ids_BC[0, : int(second.lengths_B[0])].tolist()
    logprobs2 = second.logprobs_BC[0, : int(second.lengths_B[0])].tolist()
    assert turn1[-1] == end and turn2[-1] == end

    expected_tokens = turn1 + observation + turn2
    expected_sampled = [True] * len(turn1) + [False] * len(observation) + [True] * len(turn2)
    width = len(expected_tokens)
    assert rollout.completion_ids_BC[0].tolist() == expected_tokens
    assert rollout.completion_mask_BC[0].tolist() == [True] * width
    assert rollout.sampled_mask_BC[0].tolist() == expected_sampled
    assert rollout.logprobs_BC[0].tolist() == pytest.approx(logprobs1 + [0.0] * len(observation) + logprobs2, abs=0)
    assert rollout.prompt_ids_BP[0].tolist() == prompt
    assert episode.messages[1]["content"] == tokenizer.decode(turn1, skip_special_tokens=True)
    assert episode.messages[2] == {"role": "tool", "content": "43"}
    assert episode.final_message == tokenizer.decode(turn2, skip_special_tokens=True)
    assert (episode.reward, episode.tool_calls, episode.truncated) == (1.0, 1, False)

    # a plain forward over the whole sequence: the log-probability of each model token given all before it
    sequence = torch.tensor([prompt + expected_tokens])
    with torch.no_grad():
        logits = model(input_ids=sequence).logits[0].float()
    full_logprobs = torch.log_softmax(logits, dim=-1)
    positions = range(len(prompt) - 1, len(prompt) - 1 + width)
    by_hand = [float(full_logprobs[p, t]) if s else 0.0 for p, t, s in zip(positions, expected_tokens, expected_sampled)]
    # float32 kernels of the cached decoder and the full forward differ by rounding (test_sampler: 1e-4)
    assert rollout.logprobs_BC[0].tolist() == pytest.approx(by_hand, abs=1e-4)

    # the training forward and the reference: the same numbers at model tokens, exactly 0 at environment tokens
    sampled = rollout.sampled_mask_BC
    scores = score_completions(ActorCritic(model, ValueHead(model.config.hidden_size)), rollout, 1.0)
    reference = FrozenReference(model, uses_lora=False).logprobs(model, rollout, 1.0)
    for values in (scores.logprobs_BC, reference):
        assert values[0].tolist() == pytest.approx(by_hand, abs=1e-4)
        assert (values[~sampled] == 0).all()
    assert (scores.values_BC[~sampled] == 0).all() and (scores.values_BC[sampled] != 0).all()
    kl = kl_estimate(rollout.logprobs_BC, reference, "k3")
    assert (kl[~sampled] == 0).all()

    # the loss does not see environment tokens: changing their log-probabilities changes nothing
    advantages = torch.tensor([1.0])
    loss, _ = grpo_loss(
        logprobs_BT=scores.logprobs_BC, old_logprobs_BT=rollout.logprobs_BC, advantages_BT=advantages,
        mask_BT=sampled, ref_logprobs_BT=reference, beta=0.1, kl_kind="k3",
    )
    moved = scores.logprobs_BC.detach().clone()
    moved[~sampled] = -5.0
    loss_moved, _ = grpo_loss(
        logprobs_BT=moved, old_logprobs_BT=rollout.logprobs_BC, advantages_BT=advantages,
        mask_BT=sampled, ref_logprobs_BT=reference, beta=0.1, kl_kind="k3",
    )
    assert float(loss.detach()) == pytest.approx(float(loss_moved), abs=0)


@pytest.mark.parametrize(
    "environment, why",
    [(Raises, "RuntimeError: broken environment"), (Malformed, "must return a StepResult"), (Slow, "time budget")],
    ids=["raises", "malformed", "slow"],
)
def test_a_failing_environment_fails_only_its_episode(micro, tmp_path, environment, why) -> None:
    # every turn ends at once, so the environment is always called: with the default bias 8.5% of episodes (400 sampled)
    # runs 20 tokens without ending (truncated, the environment never stepped), and which one depends on the
    # float path (thread count, CPU kernels): this test once failed so under load
    model, tokenizer = micro
    end_turns_early(model, tokenizer, bias=30.0)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    sampler = RolloutSampler([end], tokenizer.pad_token_id, "cached")
    runner = _runner(tokenizer, sampler, environment, tmp_path, timeout_s=0.2)
    row = PromptRow([{"role": "user", "content": QUESTION}], QUESTION, {"answer": "43"})
    rollout = runner.run(model, [row], SamplingSettings(max_new_tokens=20, temperature=1.0), RowNoise(0, [0]))
    episode = rollout.episodes[0]
    assert rollout.failed_B.tolist() == [True]
    assert why in episode.failure
    assert rollout.metrics()["episodes/failed"] == 1.0
    completions, examples = rollout.reward_inputs([{"answer": "43"}])
    assert examples[0]["episode_failed"] is True


def test_an_observation_the_template_cannot_render_fails_the_episode(ending_model, tmp_path) -> None:
    model, tokenizer = ending_model
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    runner = _runner(tokenizer, RolloutSampler([end], tokenizer.pad_token_id, "cached"), TwoTurns, tmp_path)

    def refuse(observations):
        raise ValueError("the template does not know role 'tool'")

    runner.observations = refuse
    row = PromptRow([{"role": "user", "content": QUESTION}], QUESTION, {"answer": "43"})
    rollout = runner.run(model, [row] * 8, SamplingSettings(max_new_tokens=6, temperature=1.0), RowNoise(0, range(8)))
    stepped = [e for e in rollout.episodes if e.turns == 1 and not e.truncated]
    assert stepped and all("rendering the observation: ValueError" in e.failure for e in stepped)
    assert rollout.failed_B.tolist() == [e.failure is not None for e in rollout.episodes]


def test_turn_limit_and_token_budget_truncate(ending_model, tmp_path) -> None:
    model, tokenizer = ending_model
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    sampler = RolloutSampler([end], tokenizer.pad_token_id, "cached")

    class Forever(Environment):
        def step(self, message: str) -> StepResult:
            return StepResult([{"role": "tool", "content": "again"}], done=False, tool_calls=1)

    row = PromptRow([{"role": "user", "content": QUESTION}], QUESTION, {"answer": "43"})
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0)
    for limits in ({"max_turns": 2, "max_episode_tokens": 500}, {"max_turns": 50, "max_episode_tokens": 30}):
        runner = _runner(tokenizer, sampler, Forever, tmp_path, **limits)
        rollout = runner.run(model, [row] * 4, settings, RowNoise(3, range(4)))
        for row_index, episode in enumerate(rollout.episodes):
            assert episode.truncated and not episode.done and episode.failure is None
            assert episode.turns <= limits["max_turns"] and len(episode.tokens) <= limits["max_episode_tokens"]
            length = len(episode.tokens)
            assert rollout.sampled_mask_BC[row_index, length - 1]  # the episode ends on the model's tokens
        assert rollout.truncated_B.all()
        assert rollout.metrics()["episodes/truncated"] == 1.0


# The tool parts of the Qwen2.5 chat template, written out (the hub is not reachable in tests): tools in the
# system prompt, consecutive tool messages in one user turn of <tool_response> blocks.
HERMES_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.\\n\\n# Tools\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture
def hermes_tokenizer(micro):
    _, tokenizer = micro
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = HERMES_TEMPLATE
    return tokenizer


def test_hermes_template_observations_and_tool_schemas(hermes_tokenizer) -> None:
    tokenizer = hermes_tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    encoder = ObservationEncoder(tokenizer, [end])
    observations = [{"role": "tool", "content": "43"}, {"role": "tool", "content": "error: unknown tool 'x'"}]
    # the model sampled <|im_end|> itself; the template's newline after it and the tool turn follow
    assert encoder.text(observations) == (
        "\n<|im_start|>user\n<tool_response>\n43\n</tool_response>\n<tool_response>\nerror: unknown tool 'x'\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    runner = EpisodeRunner(
        EnvironmentSpec(name="builtin:calculator", args={"tool_format": "hermes"}), tokenizer,
        RolloutSampler([end], tokenizer.pad_token_id), max_prompt_tokens=4096,
    )
    episode = runner.start(PromptRow([{"role": "user", "content": QUESTION}], QUESTION, {"answer": "43"}))
    prompt = tokenizer.decode(episode.prompt_ids)
    assert '{"type": "function", "function": {"name": "calculator", "description": "Evaluates an arithmetic' in prompt
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "71 - 28"}}\n</tool_call>'
    assert episode.environment.step(call).messages == [{"role": "tool", "content": "43"}]
