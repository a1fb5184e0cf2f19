"""The "ai_judge" reward source: a causal LM judges completions pairwise under a constitution's principles.

Each comparison is asked in both orders and counts only when both orders agree (`posttrain.rlaif.judge`):
a win scores 1, a loss 0, a tie 0.5; a completion's score is the mean over its comparisons and principles.

- ``mode: reference``: each completion against the example's reference answer (field `reference_field`);
- ``mode: group``: each completion against every other completion of the same prompt (a GRPO group).

The judge is any causal LM with a chat template: a folder, a hub id, or ``stage:NAME`` in an RL stage (an
earlier stage's checkpoint, e.g. the policy's own starting model). In a recipe the constitution's path is
relative to the recipe's folder (else to the working directory). torch loads when the source is built, not when this module is imported.

>>> AIJudgeReward.kind
'ai_judge'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source


def judge_rewards(
    scorer: Any,
    principles: Sequence[Any],
    prompts: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str] | None,
    margin: float = 0.0,
) -> list[RewardResult]:
    """Scores from pairwise verdicts: against ``references`` when given, else within groups of equal prompts."""
    from posttrain.rlaif.judge import judge_pairs, win_score

    comparisons: list[tuple[int, int | None]] = []  # (completion, rival completion or None for the reference)
    if references is not None:
        comparisons = [(i, None) for i in range(len(completions))]
    else:
        groups: dict[str, list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(index)
        comparisons = [(i, j) for members in groups.values() for k, i in enumerate(members) for j in members[k + 1 :]]
    pairs, owners = [], []
    for i, j in comparisons:
        rival = references[i] if j is None else completions[j]  # type: ignore[index]
        for principle in principles:
            pairs.append((principle, prompts[i], completions[i], rival))
            owners.append((i, j))
    verdicts = judge_pairs(scorer, pairs, margin=margin)
    totals, counts = [0.0] * len(completions), [0] * len(completions)
    for (i, j), verdict in zip(owners, verdicts):
        totals[i] += win_score(verdict, "a")
        counts[i] += 1
        if j is not None:
            totals[j] += win_score(verdict, "b")
            counts[j] += 1
    results = []
    for total, count in zip(totals, counts):
        if count == 0:
            results.append(RewardResult(0.5, "ok", "no rival to compare with"))
            continue
        score = total / count
        results.append(RewardResult(score, "ok" if score >= 0.5 else "wrong", f"won {score:.2f} of {count} judgements"))
    return results


@register_reward_source("ai_judge")
class AIJudgeReward(RewardSource):
    """Pairwise AI-judge reward.

    Args:
        path: The judge model (folder or hub id; `stage:NAME` inside a recipe's RL stage).
        constitution: Constitution YAML file (principles and the judge template).
        mode: "group" (against the other completions of the prompt) or "reference" (against a reference).
        reference_field: Example field holding the reference answer (mode "reference").
        principles: Names of the principles to judge under; default all.
        margin: Both orders must prefer the same completion by more than this log-probability margin.
        batch_size: Judge prompts per forward pass.
        device: torch device of the judge.
    """

    def __init__(
        self,
        *,
        path: str,
        constitution: str,
        mode: Literal["group", "reference"] = "group",
        reference_field: str = "reference",
        principles: list[str] | None = None,
        margin: float = 0.0,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if mode not in ("group", "reference"):
            raise ValueError(f"ai_judge source: mode must be 'group' or 'reference', got {mode!r}")
        from posttrain.config.common import ModelSpec
        from posttrain.models.checkpoint import load_model_and_tokenizer
        from posttrain.data.constitution import load_constitution
        from posttrain.rlaif.language_model import RoleModel

        self.constitution = load_constitution(constitution)
        names = principles or [p.name for p in self.constitution.principles]
        self.principles = [self.constitution.principle(name) for name in names]
        model, tokenizer = load_model_and_tokenizer(ModelSpec(name_or_path=path), None, device=device)
        self.judge = RoleModel(model.eval().requires_grad_(False), tokenizer, batch_size)
        self.mode, self.reference_field, self.margin = mode, reference_field, margin
        self.required_fields = (reference_field,) if mode == "reference" else ()

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        references = [str(e[self.reference_field]) for e in examples] if self.mode == "reference" else None
        return judge_rewards(self.judge.scorer(self.constitution), self.principles, prompts, completions, references, self.margin)

    def close(self) -> None:
        self.judge = None  # type: ignore[assignment]
