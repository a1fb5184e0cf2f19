"""Recipe configuration of rewards: one `RewardEntry` per reward term, each with its own weight and args.

The recipe schema imports `RewardEntry` from `posttrain.rewards`; this module imports pydantic and the
registry only (no torch), so `posttrain validate` stays fast. Source kinds and argument names are checked
when an entry is validated; argument values are checked when the source is built.

A recipe's RL stage then reads, for example::

    reward:
      - source: format
        args: {pattern: '\\\\boxed\\{.+\\}'}
        weight: 0.2
      - source: math
        gate: format            # correctness counts only when the format passed
        normalize: group_zscore
      - source: length_penalty
        args: {target_length: 400, max_length: 600}
        schedule: {start: 0.0, end: 0.5, steps: 1000}

>>> RewardEntry(source="math").key
'math'
>>> WeightSchedule(start=0.0, end=1.0, steps=100).weight_at(25)
0.25
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, NonNegativeInt, PositiveInt, model_validator

from posttrain.rewards.registry import check_reward_source_args

NormalizeMode = Literal["none", "group_zscore", "batch_zscore"]


class WeightSchedule(BaseModel):
    """A weight that moves linearly from `start` to `end` over `steps` training steps, then stays at `end`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Finite: a NaN or infinite weight would make every total reward NaN, found only as "non-finite
    # advantages" hours later without naming the weight.
    start: FiniteFloat = Field(description="Weight at `start_step` and before it.")
    end: FiniteFloat = Field(description="Weight at `start_step + steps` and after it.")
    steps: PositiveInt = Field(description="Number of training steps the linear ramp takes.")
    start_step: NonNegativeInt = Field(default=0, description="Training step at which the ramp begins.")

    def weight_at(self, step: int) -> float:
        """The weight at training step `step`."""
        progress = min(max((step - self.start_step) / self.steps, 0.0), 1.0)
        return self.start + (self.end - self.start) * progress


class RewardEntry(BaseModel):
    """One reward term of an RL stage: a reward source with its weight, arguments and composition rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        description=(
            "Reward source kind: math, code, format, length_penalty, repetition_penalty, reward_model, python, "
            "or any kind registered with @register_reward_source."
        )
    )
    name: str | None = Field(
        default=None,
        description="Name of this term in metrics and in other entries' `gate`; defaults to `source`.",
    )
    weight: FiniteFloat = Field(
        default=1.0, description="Multiplier of this term in the total reward (use `schedule` to vary it); finite."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Keyword arguments of the source, e.g. {path: ...} for reward_model, "
            "{function: 'my_rewards.py:score'} for python, {allow_code_execution: true} for code."
        ),
    )
    normalize: NormalizeMode = Field(
        default="none",
        description=(
            "Per-source normalisation before weighting: none; group_zscore (z-score within each group of "
            "completions of one prompt); batch_zscore (z-score over the batch)."
        ),
    )
    gate: str | None = Field(
        default=None,
        description=(
            "Name of another entry that must pass (status ok) for this term to count; where it does not, this "
            "term's score is 0 (e.g. the format gates correctness)."
        ),
    )
    schedule: WeightSchedule | None = Field(
        default=None,
        description="Weight schedule over training steps; replaces `weight` (set one or the other).",
    )
    allow_truncated: bool = Field(
        default=False,
        description=(
            "Let completions cut off before EOS (example field `truncated`) earn positive score from this term. "
            "By default a truncated completion's score is capped at 0: it keeps penalties, loses credit."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> RewardEntry:
        if self.schedule is not None and "weight" in self.model_fields_set:
            raise ValueError(f"reward entry {self.key!r}: set either `weight` or `schedule`, not both")
        if self.gate is not None and self.gate == self.key:
            raise ValueError(f"reward entry {self.key!r} cannot gate itself")
        check_reward_source_args(self.source, self.args)
        return self

    @property
    def key(self) -> str:
        """The entry's name: `name` if set, else `source`."""
        return self.name or self.source

    def weight_at(self, step: int) -> float:
        """This term's weight at training step `step`."""
        return self.schedule.weight_at(step) if self.schedule is not None else self.weight


def check_reward_entries(entries: Sequence[RewardEntry]) -> None:
    """Check a stage's list of entries together: unique names, gates naming another entry, no gate cycles.

    Raises:
        ValueError: Naming the offending entry.
    """
    keys = [entry.key for entry in entries]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(
            f"reward entries must have distinct names; {', '.join(map(repr, duplicates))} appear more than once "
            "(give repeated sources a `name`)"
        )
    gates = {entry.key: entry.gate for entry in entries}
    for entry in entries:
        if entry.gate is not None and entry.gate not in gates:
            raise ValueError(
                f"reward entry {entry.key!r} is gated by {entry.gate!r}, which is not an entry of this stage "
                f"(entries: {', '.join(keys)})"
            )
        seen, current = {entry.key}, entry.gate
        while current is not None:
            if current in seen:
                raise ValueError(f"reward entry {entry.key!r}: gates form a cycle through {current!r}")
            seen.add(current)
            current = gates.get(current)
