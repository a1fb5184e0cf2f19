"""Held-out evaluation during an RL stage, and the reward-hacking warning.

A policy can raise its training reward by exploiting the reward (a reward model's blind spot, a lenient
format check) rather than by getting better. Before the first step and every K steps the policy answers
held-out prompts greedily and a gold reward scores them; if the training reward has risen since the previous
evaluation while the held-out accuracy fell, a `RewardHackingWarning` is raised and the metric
``heldout/hacking_warning`` is 1. When the gold reward is not the stage's own, the held-out answers are
scored by the stage's reward too (``heldout/train_reward``): PPO against a reward model shows there whether
the model's score of fresh greedy answers rose.

Greedy answers move only when a prompt's most likely answer changes; RL raises the expected reward of
*sampled* answers. With ``samples`` the evaluation also draws that many completions per held-out prompt with
the stage's sampling settings and reports their mean training reward (``heldout/sampled_reward``) and gold
pass rate (``heldout/sampled_accuracy``). With an environment the answers are whole episodes, and
``heldout/tool_call_share`` is the share of greedy episodes that called a tool. Every evaluation uses the same random numbers (`RowNoise` with a
fixed seed), so two evaluations differ only by the policy.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

from posttrain.rl.prompts import PromptRow
from posttrain.rl.reward import RewardScorer
from posttrain.rl.sampler import RolloutSampler, RowNoise, SamplingSettings, decode_completions


class RewardHackingWarning(UserWarning):
    """Training reward went up while held-out accuracy went down."""


def fall_p_value(worse: int, better: int) -> float:
    """One-sided p-value that held-out accuracy fell, from the prompts that changed between two evaluations.

    ``worse`` prompts went from passed to failed and ``better`` from failed to passed; unchanged prompts carry
    no evidence. Under "no change in the policy's accuracy" each changed prompt is equally likely to go
    either way, so the p-value is P(X >= worse) for X ~ Binomial(worse + better, 1/2): the exact form of
    McNemar's test for paired proportions (McNemar 1947, "Note on the sampling error of the difference
    between correlated proportions or percentages", Psychometrika 12(2), eq. 1 and its exact binomial form).

    >>> fall_p_value(5, 0), fall_p_value(6, 1)
    (0.03125, 0.0625)
    """
    if worse < 0 or better < 0:
        raise ValueError(f"flip counts must be >= 0, got worse={worse}, better={better}")
    changed = worse + better
    return sum(math.comb(changed, k) for k in range(worse, changed + 1)) / 2**changed


class HeldoutEvaluation:
    """Greedy answers to held-out prompts, scored by a gold reward.

    Args:
        rows: held-out prompts (already filtered to those that fit).
        prompt_ids: their token ids.
        scorer: the gold reward.
        sampler: the stage's sampler.
        max_new_tokens: generation budget.
        batch_size: prompts per generation batch.
        every: evaluate every this many steps.
        train_reward: the stage's own reward, when ``scorer`` is another (a gold verifier).
        samples: completions sampled per prompt with ``sampling`` (0: greedy answers only).
        sampling: the stage's sampling settings (needed when ``samples`` > 0).
        seed: seeds the sampled completions' random numbers (the same at every evaluation).
        episodes: the stage's multi-turn runner (`environment:`): answers are then whole episodes, scored on
            their final message (with the environment's reward in the examples).
        p_value: warn when the fall's `fall_p_value` is at most this (1.0: any fall warns).
    """

    def __init__(
        self,
        rows: Sequence[PromptRow],
        prompt_ids: Sequence[Sequence[int]],
        scorer: RewardScorer,
        sampler: RolloutSampler,
        max_new_tokens: int,
        batch_size: int,
        every: int,
        train_reward: RewardScorer | None = None,
        samples: int = 0,
        sampling: SamplingSettings | None = None,
        seed: int = 0,
        episodes: Any = None,
        p_value: float = 0.05,
    ):
        if not 0 < p_value <= 1:
            raise ValueError(f"p_value must be in (0, 1], got {p_value}")
        if samples > 0 and (sampling is None or sampling.temperature == 0):
            raise ValueError("held-out samples need the stage's sampling settings with a temperature above 0")
        self.rows, self.prompt_ids, self.scorer, self.sampler = list(rows), list(prompt_ids), scorer, sampler
        self.train_reward = train_reward
        self.samples, self.sampling, self.seed = samples, sampling, seed
        self.episodes = episodes
        self.last_episodes: list[Any] = []  # the latest evaluation's episodes (for samples)
        self.settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0)
        self.batch_size, self.every, self.p_value = batch_size, every, p_value
        # (training reward, held-out accuracy, which prompts passed) at the last evaluation
        self.previous: tuple[float, float, list[bool]] | None = None

    def due(self, step: int, steps: int) -> bool:
        """Whether to evaluate after 0-based step ``step`` of ``steps``."""
        return (step + 1) % self.every == 0 or step + 1 == steps

    def evaluate_initial(self, policy: Any, tokenizer: Any) -> dict[str, float]:
        """The held-out metrics of the starting policy (no reward-hacking check: nothing was trained yet)."""
        return self._score(policy, tokenizer, step=-1)[0]

    def evaluate(self, policy: Any, tokenizer: Any, step: int, training_reward: float) -> dict[str, float]:
        """Scores greedy answers; ``training_reward`` is the mean training reward since the last evaluation."""
        metrics, passed = self._score(policy, tokenizer, step)
        accuracy = metrics["heldout/accuracy"]
        hacking = False
        if self.previous is not None:
            before_reward, before_accuracy, before_passed = self.previous
            worse = sum(was and not now for was, now in zip(before_passed, passed))
            better = sum(now and not was for was, now in zip(before_passed, passed))
            p = fall_p_value(worse, better)
            metrics.update({"heldout/flips_worse": float(worse), "heldout/flips_better": float(better),
                            "heldout/fall_p_value": p})
            hacking = training_reward > before_reward and worse > better and p <= self.p_value
            if hacking:
                warnings.warn(
                    f"step {step + 1}: the training reward rose ({before_reward:.4g} -> {training_reward:.4g}) while "
                    f"held-out accuracy fell ({before_accuracy:.4g} -> {accuracy:.4g}: {worse} prompts right before "
                    f"and wrong now, {better} the other way, p={p:.3g}); the policy may be exploiting the reward "
                    "rather than improving",
                    RewardHackingWarning,
                    stacklevel=2,
                )
        metrics["heldout/hacking_warning"] = float(hacking)
        self.previous = (training_reward, accuracy, passed)
        return metrics

    def _score(self, policy: Any, tokenizer: Any, step: int) -> tuple[dict[str, float], list[bool]]:
        """The held-out metrics, and which greedy answers passed the gold reward (prompt by prompt)."""
        completions, examples, questions = self._answer(policy, tokenizer, self.rows, self.prompt_ids, self.settings)
        scored = self.scorer(questions, completions, examples, step)
        greedy_passed = [bool(ok) for ok in self.scorer.passed(scored)]
        metrics = {
            "heldout/accuracy": sum(greedy_passed) / len(greedy_passed), "heldout/reward": float(scored.rewards_B.mean()),
        }
        if self.episodes is not None:  # how often the greedy policy used a tool at all (tool RL moves this)
            metrics["heldout/tool_call_share"] = sum(e.tool_calls > 0 for e in self.last_episodes) / len(self.last_episodes)
        if self.train_reward is not None:
            own = self.train_reward(questions, completions, examples, step)
            metrics["heldout/train_reward"] = float(own.rewards_B.mean())
        if self.samples > 0:
            rows = [row for row in self.rows for _ in range(self.samples)]
            prompt_ids = [ids for ids in self.prompt_ids for _ in range(self.samples)]
            completions, examples, questions = self._answer(policy, tokenizer, rows, prompt_ids, self.sampling, sampled=True)
            gold = self.scorer(questions, completions, examples, step)
            own = gold if self.train_reward is None else self.train_reward(questions, completions, examples, step)
            passed = self.scorer.passed(gold)
            metrics["heldout/sampled_accuracy"] = sum(passed) / len(passed)
            metrics["heldout/sampled_reward"] = float(own.rewards_B.mean())
        return metrics, greedy_passed

    def _answer(
        self, policy: Any, tokenizer: Any, rows: list[PromptRow], prompt_ids: list, settings: SamplingSettings, sampled: bool = False
    ) -> tuple[list[str], list[dict], list[str]]:
        """Completions of ``rows`` (greedy, or sampled with fixed random numbers), their examples and questions."""
        if self.episodes is not None:
            return self._episodes(policy, rows, settings, sampled)
        completions: list[str] = []
        truncated: list[bool] = []
        for start in range(0, len(rows), self.batch_size):
            batch = prompt_ids[start : start + self.batch_size]
            noise = RowNoise(self.seed, range(start, start + len(batch))) if sampled else None
            rollout = self.sampler.sample(policy, batch, settings, noise=noise)
            completions += decode_completions(tokenizer, rollout.completion_ids_BC, rollout.completion_mask_BC)
            truncated += rollout.truncated_B.tolist()
        examples = [{**row.example, "truncated": cut} for row, cut in zip(rows, truncated)]
        return completions, examples, [row.question for row in rows]

    def _episodes(
        self, policy: Any, rows: list[PromptRow], settings: SamplingSettings, sampled: bool
    ) -> tuple[list[str], list[dict], list[str]]:
        """Whole episodes of ``rows``: their final messages and examples (with the environment's reward)."""
        completions: list[str] = []
        examples: list[dict] = []
        episodes: list[Any] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            noise = RowNoise(self.seed, range(start, start + len(batch))) if sampled else None
            rollout = self.episodes.run(policy, batch, settings, noise=noise)
            texts, fields = rollout.reward_inputs([dict(row.example) for row in batch])
            completions += texts
            examples += fields
            episodes += rollout.episodes
        if not sampled:  # the report shows the greedy episodes, not the sampled ones of `samples`
            self.last_episodes = episodes
        return completions, examples, [row.question for row in rows]
