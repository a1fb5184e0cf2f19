"""The "math" reward source: 1 if the completion's final answer equals the example's gold answer, else 0.

A thin adapter over `posttrain.verifiers.math_answer.MathVerifier` (extraction, math-verify equivalence in
killable worker processes, timeouts). A gold answer that cannot be parsed gives status "error": the example
is excluded, never rewarded.

>>> source = MathReward()
>>> [r.score for r in source(["1+1?", "1+1?"], ["\\\\boxed{2}", "It is 3."], examples=[{"answer": "2"}] * 2)]
[1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source
from posttrain.verifiers.math_answer import ANSWER_POLICIES, MAX_ANSWER_CHARS, MathVerifier


@register_reward_source("math")
class MathReward(RewardSource):
    """Math answer correctness against the example's gold answer.

    Args:
        answer_field: Example field holding the gold answer.
        match: The answer-extraction policy (`posttrain.verifiers.math_answer.ANSWER_POLICIES`), the same
            names as the `exact_match` evaluator's `match:`; default `final_answer`: a marked answer, else
            the last number.
        extractors: Final-answer extractors, in order (see `posttrain.verifiers.math_answer.EXTRACTORS`);
            replaces the policy's list when given.
        timeout_s: Wall-clock limit per verification.
        max_answer_chars: Longer answers score 0 without being parsed.
        workers: Verifier worker processes.
    """

    def __init__(
        self,
        *,
        answer_field: str = "answer",
        match: str = "final_answer",
        extractors: Sequence[str] | None = None,
        timeout_s: float = 2.0,
        max_answer_chars: int = MAX_ANSWER_CHARS,
        workers: int = 2,
    ) -> None:
        if match not in ANSWER_POLICIES:
            raise ValueError(f"unknown answer policy match={match!r}; policies: {', '.join(ANSWER_POLICIES)}")
        extractors = ANSWER_POLICIES[match] if extractors is None else extractors
        self.answer_field = answer_field
        self.required_fields = (answer_field,)
        self.verifier = MathVerifier(
            extractors=extractors, timeout_s=timeout_s, max_answer_chars=max_answer_chars, workers=workers
        )

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        golds = [str(example[self.answer_field]) for example in examples]
        return self.verifier.verify_many(completions, golds)
