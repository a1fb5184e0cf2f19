"""The "format" reward source: 1 if the completion matches a regular expression, else 0 (status "wrong").

Typical use: gate correctness on the format (`gate: format` on the math entry), as in DeepSeek-R1's
format reward (arXiv 2501.12948, section 2.2.2). The default pattern asks for
`<think>...</think><answer>...</answer>`.

>>> source = FormatReward(pattern=r"\\\\boxed\\{.+\\}", mode="search")
>>> [r.status for r in source(["q", "q"], ["so \\\\boxed{4}", "4"])]
['ok', 'wrong']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source

DEFAULT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"


@register_reward_source("format")
class FormatReward(RewardSource):
    """Regular-expression format check.

    Args:
        pattern: The regular expression (Python `re` syntax; `.` matches newlines).
        mode: "fullmatch" (the whole completion, stripped, must match) or "search" (anywhere).
        score: Score for a match (a miss scores 0).
    """

    def __init__(
        self, *, pattern: str = DEFAULT_PATTERN, mode: Literal["fullmatch", "search"] = "fullmatch", score: float = 1.0
    ) -> None:
        if mode not in ("fullmatch", "search"):
            raise ValueError(f"format source: mode must be 'fullmatch' or 'search', got {mode!r}")
        try:
            self.regex = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise ValueError(f"format source: invalid pattern {pattern!r}: {exc}") from exc
        self.mode = mode
        self.match_score = score

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        results = []
        for completion in completions:
            text = completion.strip()
            matched = self.regex.fullmatch(text) if self.mode == "fullmatch" else self.regex.search(text)
            if matched:
                results.append(RewardResult(self.match_score, "ok", "format matched"))
            else:
                results.append(RewardResult(0.0, "wrong", f"does not {self.mode} {self.regex.pattern!r}"))
        return results
