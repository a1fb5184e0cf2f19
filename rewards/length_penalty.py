"""The "length_penalty" reward source: 0 up to a target length, falling linearly to -1 at a maximum length.

This is DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13) with `target_length = L_max - L_cache`
and `max_length = L_max`, measured in characters or whitespace-separated words (no tokenizer needed).

>>> source = LengthPenalty(target_length=4, max_length=8)
>>> [r.score for r in source(["q"] * 3, ["abcd", "abcdef", "abcdefghij"])]
[0.0, -0.5, -1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source


@register_reward_source("length_penalty")
class LengthPenalty(RewardSource):
    """Linear penalty for completions longer than `target_length`.

    Args:
        target_length: Longest length with no penalty.
        max_length: Length at (and beyond) which the penalty is -1.
        unit: "chars" or "words".
    """

    def __init__(self, *, target_length: int, max_length: int, unit: Literal["chars", "words"] = "chars") -> None:
        if not 0 <= target_length < max_length:
            raise ValueError(
                f"length_penalty: need 0 <= target_length < max_length, got {target_length} and {max_length}"
            )
        if unit not in ("chars", "words"):
            raise ValueError(f"length_penalty: unit must be 'chars' or 'words', got {unit!r}")
        self.target_length, self.max_length, self.unit = target_length, max_length, unit

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        results = []
        for completion in completions:
            length = len(completion) if self.unit == "chars" else len(completion.split())
            over = (length - self.target_length) / (self.max_length - self.target_length)
            penalty = 0.0 - min(max(over, 0.0), 1.0)
            results.append(RewardResult(penalty, "ok", f"{length} {self.unit}"))
        return results
