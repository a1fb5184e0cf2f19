"""Multi-turn rollouts: the policy talks with an environment (`posttrain.envs`) until the episode ends.

One episode per prompt row (a GRPO group is ``group_size`` episodes of the same row). Each turn:

1. every running episode's whole context (first prompt, then everything since) is sampled by the stage's
   `RolloutSampler`, which returns the sampled token ids and their log-probabilities;
2. those ids are appended to the episode as they are: the model's tokens are never decoded and re-encoded
   (re-tokenising text can give other ids than the sampled ones, and the PPO ratio and the KL would then
   compare the policy with tokens it never produced);
3. the decoded message goes to the environment's ``step``; its observation messages are rendered with the
   chat template (`ObservationEncoder`) and appended as *environment tokens*: in the sequence, attended
   to, but not the policy's actions.

The result is an `EpisodeRollout`: a `Rollout` whose completion is everything after the first prompt, with
``completion_mask_BC`` true at every real token (model and environment: the attention mask) and
``sampled_mask_BC`` true only at the model's tokens. The engine trains on ``sampled_mask_BC`` (the loss, the
KL and the logged log-probability gap); `posttrain.rl.policy` scores log-probabilities there only, so the
sampler's, the training forward's and the reference's log-probabilities are 0 at environment tokens, and
PPO's values are read through the same mask (GAE carries across the gap:
`posttrain.algorithms.advantages.gae_advantages`). An episode always ends on model tokens (an observation
that would not leave room for another turn ends the episode instead), so the sequence reward sits on the
model's last token.

An environment that raises, breaks the protocol, or runs past ``timeout_s`` fails its episode: it is
excluded from training (like a reward source's infrastructure error) and counted in ``episodes/failed``.
Why by hand: TRL's and verl's multi-turn rollouts are tied to their trainers and vLLM servers; the part
needed here is the token bookkeeping above, about a hundred lines on the project's own sampler.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from posttrain.config.environment import EnvironmentSpec
from posttrain.envs.protocol import EpisodeError, Message, check_reset, check_step
from posttrain.envs.registry import check_environment
from posttrain.rewards.python_function import call_with_timeout
from posttrain.rl.prompts import PromptRow
from posttrain.rl.sampler import Rollout, RolloutSampler, RowNoise, SamplingSettings, left_pad

_SENTINEL = "\u2063posttrain-assistant-turn\u2063"  # an assistant message no template alters


class ObservationEncoder:
    """Token ids of observation messages placed after an assistant turn, as the chat template renders them.

    The template renders a probe conversation twice, ending with an assistant turn and then with the
    observations and the next generation prompt; the text after the assistant's content, less the
    template's end-of-turn marker (the model has already sampled its own end token), is the environment's
    part. A template that does not render the longer conversation as an extension of the shorter one cannot
    be used for multi-turn episodes (an error says so).

    Args:
        tokenizer: the policy's tokenizer (its chat template).
        end_token_ids: the tokens that end an assistant turn.
    """

    def __init__(self, tokenizer: Any, end_token_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.end_texts = sorted({tokenizer.decode([i]) for i in end_token_ids}, key=len, reverse=True)
        self.probe: list[Message] = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
        self.before = self._render(self.probe, add_generation_prompt=False)

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def text(self, observations: list[Message]) -> str:
        """The text that follows the model's end token: observations, then the next assistant prompt."""
        after = self._render(self.probe + observations, add_generation_prompt=True)
        turn_end = self.before.index(_SENTINEL) + len(_SENTINEL)
        if not after.startswith(self.before[:turn_end]) or not after.startswith(self.before.rstrip()):
            raise EpisodeError(
                "the chat template does not render a conversation with tool/observation messages as an extension "
                "of the conversation before them, so environment tokens cannot be appended to the model's"
            )
        tail = after[turn_end:]
        for end in self.end_texts:
            if end and tail.startswith(end):
                return tail[len(end) :]
        return tail

    def __call__(self, observations: list[Message]) -> list[int]:
        return list(self.tokenizer(self.text(observations), add_special_tokens=False)["input_ids"])


@dataclass
class Episode:
    """One conversation between the policy and its environment.

    Attributes:
        row: the prompt row it started from.
        environment: the episode's environment (None once failed).
        messages: the conversation: first messages, assistant messages and observations.
        prompt_ids: the first prompt's tokens (with the tools' schemas where the template shows them).
        tokens: everything after the prompt: model and environment tokens, in order.
        sampled: per token of ``tokens``, whether the model sampled it.
        logprobs: per token, the sampler's log-probability (0 at environment tokens).
    """

    row: PromptRow
    environment: Any = None
    messages: list[Message] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    reward: float = 0.0
    running: bool = True
    done: bool = False
    truncated: bool = False
    failure: str | None = None
    environment_seconds: float = 0.0
    final_message: str = ""

    def fail(self, why: str) -> None:
        self.failure, self.running, self.environment = why, False, None

    def transcript(self) -> str:
        """The conversation as text, one message per line (for samples and logs)."""
        lines = [f"{m['role']}: {m['content']}" for m in self.messages]
        ending = f"[failed: {self.failure}]" if self.failure else "[truncated]" if self.truncated else ""
        return "\n".join(lines + ([ending] if ending else []))


@dataclass
class EpisodeRollout(Rollout):
    """A `Rollout` of whole episodes (see the module docstring for the masks).

    Attributes:
        sampled_mask_BC: True at the tokens the model sampled, (B, C).
        failed_B: True where the environment failed (the episode is excluded).
        episodes: the episodes, row by row.
    """

    sampled_mask_BC: torch.Tensor = None  # type: ignore[assignment]
    failed_B: torch.Tensor = None  # type: ignore[assignment]
    episodes: list[Episode] = field(default_factory=list)

    def reward_inputs(self, examples: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
        """What reward sources score: each episode's final assistant message, and the examples with
        ``environment_reward``, ``episode_failed`` and the whole conversation (``episode_messages``)."""
        completions = [episode.final_message for episode in self.episodes]
        examples = [
            {**example, "truncated": episode.truncated, "environment_reward": episode.reward,
             "episode_failed": episode.failure is not None, "episode_messages": episode.messages}
            for example, episode in zip(examples, self.episodes)
        ]  # fmt: skip
        return completions, examples

    def metrics(self) -> dict[str, float]:
        """Per-episode means of turns, tool calls, tool errors and length; truncated share; failures."""
        count = max(len(self.episodes), 1)
        return {
            "episodes/turns": sum(e.turns for e in self.episodes) / count,
            "episodes/tool_calls": sum(e.tool_calls for e in self.episodes) / count,
            "episodes/tool_errors": sum(e.tool_errors for e in self.episodes) / count,
            "episodes/length": sum(len(e.tokens) for e in self.episodes) / count,
            "episodes/truncated": sum(e.truncated for e in self.episodes) / count,
            "episodes/failed": float(sum(e.failure is not None for e in self.episodes)),
            "episodes/environment_seconds": sum(e.environment_seconds for e in self.episodes) / count,
        }


class EpisodeRunner:
    """Runs batches of episodes with the stage's sampler.

    Args:
        spec: the stage's `environment:` section.
        tokenizer: the policy's tokenizer.
        sampler: the stage's sampler (its end tokens end a turn).
        max_prompt_tokens: an episode whose first prompt is longer fails (counted).
        recipe_dir: where ``path.py:Class`` environments are found.
    """

    def __init__(
        self, spec: EnvironmentSpec, tokenizer: Any, sampler: RolloutSampler, max_prompt_tokens: int,
        recipe_dir: Path | None = None,
    ):
        self.spec, self.tokenizer, self.sampler = spec, tokenizer, sampler
        self.max_prompt_tokens = max_prompt_tokens
        self.environment_class = check_environment(spec.name, spec.args, recipe_dir)
        self.observations = ObservationEncoder(tokenizer, sampler.eos_token_ids)

    def _timed(self, episode: Episode, call: Any, *args: Any) -> Any:
        """``call(*args)`` within what is left of the episode's time budget (raises TimeoutError past it)."""
        left = self.spec.timeout_s - episode.environment_seconds
        began = time.perf_counter()
        try:
            if left <= 0:
                raise TimeoutError("no time left")
            return call_with_timeout(call, args, left)
        finally:
            episode.environment_seconds += time.perf_counter() - began

    def start(self, row: PromptRow) -> Episode:
        """A new episode of ``row``: the environment built and reset, the first prompt rendered with its tools."""
        episode = Episode(row)
        try:
            episode.environment = self.environment_class(**self.spec.args)
            example = {**row.example, "messages": row.messages, "question": row.question}
            episode.messages = check_reset(self._timed(episode, episode.environment.reset, example))
            tools = episode.environment.tool_schemas() or None
            text = self.tokenizer.apply_chat_template(episode.messages, tools=tools, tokenize=False, add_generation_prompt=True)
            episode.prompt_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception as error:  # the environment's fault: excluded, counted, the run goes on
            episode.fail(_why(error, "reset"))
        if episode.failure is None and not 0 < len(episode.prompt_ids) <= self.max_prompt_tokens:
            episode.fail(f"the first prompt has {len(episode.prompt_ids)} tokens (generation.max_prompt_tokens: {self.max_prompt_tokens})")
        if not episode.prompt_ids:  # the batch still needs a prompt for this row; it is never trained on
            episode.prompt_ids = [self.sampler.pad_token_id]
        return episode

    @torch.no_grad()
    def run(
        self, model: Any, rows: Sequence[PromptRow], settings: SamplingSettings, noise: RowNoise | None = None,
    ) -> EpisodeRollout:
        """One episode per row, all turns; ``noise`` (one row per episode) gives each turn its own streams."""
        episodes = [self.start(row) for row in rows]
        for turn in range(self.spec.max_turns):
            active = [i for i, episode in enumerate(episodes) if episode.running]
            if not active:
                break
            turn_noise = None
            if noise is not None:
                turn_noise = RowNoise((noise.seed * 1_000_003 + turn) & 0x7FFFFFFF, [noise.rows[i] for i in active])
            rollout = self.sampler.sample(model, [episodes[i].prompt_ids + episodes[i].tokens for i in active], settings, noise=turn_noise)
            lengths = rollout.lengths_B.tolist()
            for k, index in enumerate(active):
                length = lengths[k]
                self._take_turn(
                    episodes[index], rollout.completion_ids_BC[k, :length].tolist(),
                    rollout.logprobs_BC[k, :length].tolist(), ended=not bool(rollout.truncated_B[k]), last_turn=turn + 1 == self.spec.max_turns,
                )  # fmt: skip
        return self._assemble(episodes, rollout_device(model))

    def _take_turn(self, episode: Episode, ids: list[int], logprobs: list[float], ended: bool, last_turn: bool) -> None:
        """Appends the model's turn, asks the environment, appends its observation (or ends the episode)."""
        room = self.spec.max_episode_tokens - len(episode.tokens)
        if len(ids) > room:
            ids, logprobs, ended = ids[:room], logprobs[:room], False
        episode.tokens += ids
        episode.sampled += [True] * len(ids)
        episode.logprobs += logprobs
        episode.turns += 1
        message = self.tokenizer.decode(ids, skip_special_tokens=True)
        episode.messages.append({"role": "assistant", "content": message})
        episode.final_message = message
        if not ended:  # cut off mid-message: no complete message to act on
            episode.truncated, episode.running = True, False
            return
        try:
            result = check_step(self._timed(episode, episode.environment.step, message))
        except Exception as error:
            episode.fail(_why(error, "step"))
            return
        episode.reward = float(result.reward)
        episode.tool_calls += result.tool_calls
        episode.tool_errors += result.tool_errors
        if result.done:
            episode.done, episode.running = True, False
            return
        try:  # a message the chat template cannot render (an unknown role...) is a malformed step
            observation = self.observations(result.messages)
        except Exception as error:
            episode.fail(_why(error, "rendering the observation"))
            return
        if last_turn or len(episode.tokens) + len(observation) >= self.spec.max_episode_tokens:
            episode.truncated, episode.running = True, False  # no room for another turn: end on the model's tokens
            return
        episode.messages += result.messages
        episode.tokens += observation
        episode.sampled += [False] * len(observation)
        episode.logprobs += [0.0] * len(observation)

    def _assemble(self, episodes: list[Episode], device: torch.device) -> EpisodeRollout:
        """The episodes as one batch: prompts left-padded, completions right-padded."""
        prompt_ids_BP, prompt_mask_BP = left_pad([e.prompt_ids for e in episodes], self.sampler.pad_token_id, device)
        width = max(1, max(len(e.tokens) for e in episodes))
        shape = (len(episodes), width)
        ids_BC = torch.full(shape, self.sampler.pad_token_id, dtype=torch.long)
        mask_BC = torch.zeros(shape, dtype=torch.bool)
        sampled_BC = torch.zeros(shape, dtype=torch.bool)
        logprobs_BC = torch.zeros(shape, dtype=torch.float32)
        for row, episode in enumerate(episodes):
            length = len(episode.tokens)
            ids_BC[row, :length] = torch.tensor(episode.tokens, dtype=torch.long)
            mask_BC[row, :length] = True
            sampled_BC[row, :length] = torch.tensor(episode.sampled, dtype=torch.bool)
            logprobs_BC[row, :length] = torch.tensor(episode.logprobs, dtype=torch.float32)
        return EpisodeRollout(
            prompt_ids_BP=prompt_ids_BP,
            prompt_mask_BP=prompt_mask_BP,
            completion_ids_BC=ids_BC.to(device),
            completion_mask_BC=mask_BC.to(device),
            logprobs_BC=logprobs_BC.to(device),
            truncated_B=torch.tensor([e.truncated for e in episodes], dtype=torch.bool, device=device),
            sampled_mask_BC=sampled_BC.to(device),
            failed_B=torch.tensor([e.failure is not None for e in episodes], dtype=torch.bool, device=device),
            episodes=episodes,
        )


def rollout_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def greedy(settings: SamplingSettings, max_new_tokens: int) -> SamplingSettings:
    """Greedy decoding with a turn budget (held-out episodes)."""
    return replace(settings, max_new_tokens=max_new_tokens, temperature=0.0)


def _why(error: BaseException, where: str) -> str:
    if isinstance(error, TimeoutError):
        return f"{where}: the environment ran past its time budget (environment.timeout_s)"
    return f"{where}: {type(error).__name__}: {error}"[:300]


EPISODES_FILE = "episodes.json"
"""Held-out episodes of an RL stage with an environment, for the run report (`posttrain.report`)."""


def write_episode_samples(stage_dir: Path, label: str, episodes: Sequence[Episode], count: int = 6) -> None:
    """Stores the first ``count`` episodes' transcripts under ``label`` in ``<stage>/episodes.json``, keeping
    the first label written (the starting policy's) and this one (the latest evaluation's)."""
    from posttrain.files import write_json_atomic

    path = stage_dir / EPISODES_FILE
    try:
        import json

        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        saved = {}
    first = next(iter(saved.items()), None)
    samples = [{"transcript": e.transcript(), "reward": e.reward} for e in episodes[:count]]
    kept = {first[0]: first[1]} if first is not None and first[0] != label else {}
    write_json_atomic(path, {**kept, label: samples})
