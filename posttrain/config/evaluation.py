"""Evaluation and gate settings of a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config.common import DataSpec, Strict
from posttrain.registry import EVALUATORS


class EvalConfig(Strict):
    """One evaluator, run after every stage (and by `posttrain eval`)."""

    name: str = Field(description="Short name; metrics appear as `NAME.metric` in the table.")
    kind: str = Field(
        description="`exact_match`: greedy answers compared with the `answer` column (the final number, "
        "or the whole text); `perplexity`: on held-out text; `pairwise_accuracy`: a reward model's "
        "chosen-over-rejected accuracy on preference pairs (runs on reward-model checkpoints only); "
        "`preference_accuracy`: the same for a language model's response log-probabilities; "
        "`principle_violations`: the share of greedy answers breaking the built-in world's checkable principles."
    )
    data: DataSpec = Field(description="Held-out data.")
    max_new_tokens: int = Field(16, gt=0, description="exact_match: generation budget per answer.")
    batch_size: int = Field(64, gt=0, description="Examples per forward pass.")
    match: Literal["last_number", "full_text"] = Field(
        "last_number", description="exact_match: compare the last number in the answer, or the stripped text."
    )
    seq_len: int = Field(256, gt=0, description="perplexity: tokens per window; preference evaluators: tokens per text.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return EVALUATORS.check(kind)


class GateConfig(Strict):
    """A condition checked after a stage's evaluation; a failed gate stops the pipeline with a message."""

    metric: str = Field(description="Metric name as in the table, e.g. `arithmetic.accuracy`.")
    max_drop: float | None = Field(
        None,
        ge=0,
        description="The metric may fall by at most this much from the stage's parent (the nearest evaluated "
        "stage it descends from; or `relative_to`).",
    )
    min: float | None = Field(None, description="The metric must be at least this.")
    stages: list[str] | None = Field(None, description="Stages the gate applies to; default all.")
    relative_to: str | None = Field(
        None,
        description="`max_drop` is measured from this earlier stage's value (or `base`: the starting model), e.g. "
        "the SFT model every later stage must stay near, instead of from each stage's parent.",
    )

    @model_validator(mode="after")
    def _has_condition(self) -> "GateConfig":
        if self.max_drop is None and self.min is None:
            raise ValueError("a gate needs `max_drop` or `min`")
        return self
