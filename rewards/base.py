"""The reward interface: a typed call on a batch returning one `RewardResult` per completion.

Every reward source — trained reward model, math or code verifier, rule-based shaping, AI judge, a user's
Python function — is a `RewardSource`. Per-example data (gold answer, tests, entry point, `truncated`...)
travels as one dict per example (`examples`), and each source declares the fields it needs in
`required_fields`; a missing field is an error naming the source and the field, rather than a `**kwargs`
catch-all that would swallow a misspelt name.

>>> class Constant(RewardSource):
...     def score(self, prompts, completions, examples, step):
...         return [RewardResult(0.5, "ok", "constant") for _ in completions]
>>> Constant()(["q"], ["a"])
[VerificationResult(score=0.5, status='ok', reason='constant')]
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from posttrain.verifiers.result import STATUSES, Status, VerificationResult

RewardResult = VerificationResult
"""`RewardResult(score, status, reason)`: one type shared with the verifiers, so a verifier's verdict
passes straight through as a reward. `status`: "ok" (passed, or a neutral shaping score), "wrong" (the
answer was judged wrong), "error" (infrastructure problem: excluded from training, never rewarded)."""

Example = Mapping[str, Any]
"""Per-example fields: e.g. {"answer": "42"}, {"tests": "...", "entry_point": "f"}, {"truncated": True}."""

TRUNCATED_FIELD = "truncated"
"""Example field marking a completion cut off before EOS (see `posttrain.rewards.compose`)."""

__all__ = ["STATUSES", "TRUNCATED_FIELD", "Example", "MissingFieldError", "RewardResult", "RewardSource", "Status"]


class MissingFieldError(ValueError):
    """An example lacks a field that a reward source requires."""


class RewardSource(abc.ABC):
    """Base class of reward sources. Subclasses implement `score` and set `required_fields`.

    Attributes:
        kind: The registry name (set by `register_reward_source`).
        name: Name used in errors and metrics (the recipe entry's name; defaults to `kind`).
        required_fields: Example fields `score` reads; checked on every call.
    """

    kind: ClassVar[str] = ""
    name: str = ""
    required_fields: tuple[str, ...] = ()

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        examples: Sequence[Example] | None = None,
        step: int = 0,
    ) -> list[RewardResult]:
        """Score a batch.

        Args:
            prompts: One prompt per completion (repeated for each completion of a GRPO group).
            completions: The model's completions.
            examples: One dict of per-example fields per completion (see `required_fields`).
            step: The training step (for sources whose behaviour changes over training).

        Returns:
            One `RewardResult` per completion, in order.

        Raises:
            ValueError: On mismatched lengths; `MissingFieldError` if an example lacks a required field.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"reward source {self.label!r}: {len(prompts)} prompts but {len(completions)} completions")
        rows: Sequence[Example] = examples if examples is not None else [{}] * len(completions)
        if len(rows) != len(completions):
            raise ValueError(f"reward source {self.label!r}: {len(rows)} examples but {len(completions)} completions")
        check_fields(self.label, self.required_fields, rows)
        results = self.score(list(prompts), list(completions), rows, step)
        if len(results) != len(completions) or not all(isinstance(result, RewardResult) for result in results):
            raise TypeError(
                f"reward source {self.label!r} returned {len(results)} results for {len(completions)} completions "
                "(each must be a RewardResult)"
            )
        return results

    @property
    def label(self) -> str:
        """How errors and metrics name this source."""
        return self.name or self.kind or type(self).__name__

    @abc.abstractmethod
    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        """Score a validated batch (same arguments as `__call__`)."""

    def close(self) -> None:
        """Release resources (worker processes, models). Default: nothing."""


def check_fields(source: str, fields: Sequence[str], examples: Sequence[Example]) -> None:
    """Raise `MissingFieldError` naming the source, the field and the first example lacking it."""
    for field in fields:
        for index, example in enumerate(examples):
            if field not in example:
                have = ", ".join(sorted(map(str, example))) or "no fields"
                raise MissingFieldError(
                    f"reward source {source!r} needs the field {field!r} in every example, but example {index} "
                    f"lacks it (it has: {have}). Add it to the dataset, or point the source at the right column "
                    "with its `*_field` argument."
                )


def as_score(value: object) -> float | None:
    """`value` as a finite float if it is a real number (bools count), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    try:  # numpy / torch scalars
        number = float(value.item())  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
