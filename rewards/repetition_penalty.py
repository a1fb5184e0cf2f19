"""The "repetition_penalty" reward source: minus the share of repeated n-grams in the completion.

score = max_penalty * (1 - distinct n-grams / all n-grams), following the n-gram repetition penalty of
Yeo et al., "Demystifying Long Chain-of-Thought Reasoning in LLMs" (arXiv 2502.03373). Words are
whitespace-separated; completions shorter than n words get 0.

>>> source = RepetitionPenalty(ngram_size=2)
>>> [r.score for r in source(["q", "q"], ["a b c d", "a b a b a b"])]
[0.0, -0.6]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source


def repeated_ngram_share(tokens: Sequence[str], ngram_size: int) -> float:
    """Share of n-grams that repeat an earlier one (0 when there are no n-grams)."""
    ngrams = [tuple(tokens[i : i + ngram_size]) for i in range(len(tokens) - ngram_size + 1)]
    if not ngrams:
        return 0.0
    return 1.0 - len(set(ngrams)) / len(ngrams)


@register_reward_source("repetition_penalty")
class RepetitionPenalty(RewardSource):
    """Penalty proportional to the share of repeated n-grams.

    Args:
        ngram_size: n.
        max_penalty: Score when every n-gram is a repeat (negative).
        unit: "words" (whitespace-separated) or "chars".
    """

    def __init__(
        self, *, ngram_size: int = 3, max_penalty: float = -1.0, unit: Literal["words", "chars"] = "words"
    ) -> None:
        if ngram_size < 1:
            raise ValueError(f"repetition_penalty: ngram_size must be >= 1, got {ngram_size}")
        if max_penalty > 0:
            raise ValueError(f"repetition_penalty: max_penalty must be <= 0, got {max_penalty}")
        if unit not in ("words", "chars"):
            raise ValueError(f"repetition_penalty: unit must be 'words' or 'chars', got {unit!r}")
        self.ngram_size, self.max_penalty, self.unit = ngram_size, max_penalty, unit

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        results = []
        for completion in completions:
            tokens = completion.split() if self.unit == "words" else list(completion)
            share = repeated_ngram_share(tokens, self.ngram_size)
            results.append(
                RewardResult(self.max_penalty * share + 0.0, "ok", f"{share:.0%} repeated {self.ngram_size}-grams")
            )
        return results
