"""Scoring rollouts with a stage's `reward:` list.

Builds the `CompositeReward` of the entries (weights, gates, normalisation, the truncation cap: a
completion cut off before its end token earns no positive reward unless an entry allows it) with two
additions for RL stages:

- ``path: stage:NAME`` in a ``reward_model`` or ``ai_judge`` entry names the checkpoint of stage NAME of the
  same run, and a reward model runs on the policy's device unless the entry sets ``device``.
- Every source is wrapped so that an exception names the source and shows the completion that triggered
  it, rather than surfacing as a bare traceback from deep inside a verifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.models.checkpoint import stage_checkpoint
from posttrain.rewards import CompositeReward, Example, RewardEntry, RewardResult, RewardSource, build_reward_source



class RewardSourceError(RuntimeError):
    """A reward source raised while scoring completions."""


def _preview(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class GuardedSource(RewardSource):
    """Runs another source; if it raises, finds the first completion that makes it raise and names it."""

    def __init__(self, inner: RewardSource):
        self.inner = inner
        self.required_fields = inner.required_fields

    def score(self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int) -> list[RewardResult]:
        try:
            return self.inner.score(prompts, completions, examples, step)
        except Exception as batch_error:
            culprit, error = None, batch_error
            if len(completions) > 1:
                for index in range(len(completions)):
                    try:
                        self.inner.score(prompts[index : index + 1], completions[index : index + 1], examples[index : index + 1], step)
                    except Exception as single_error:
                        culprit, error = index, single_error
                        break
            where = (
                f"completion {culprit} {_preview(completions[culprit])} (prompt {_preview(prompts[culprit])})"
                if culprit is not None
                else f"a batch of {len(completions)} completions (none raises alone; first: {_preview(completions[0])})"
            )
            raise RewardSourceError(
                f"reward source {self.label!r} raised {type(error).__name__}: {error} on {where}"
            ) from batch_error

    def close(self) -> None:
        self.inner.close()


# file arguments of the built-in sources: resolved against the recipe's folder when the file is there
_FILE_ARGS = {"ai_judge": "constitution", "python": "function"}


def _from_recipe_dir(value: str, recipe_dir: Path | None) -> str:
    """``value`` (a path, or ``path.py:function``) relative to ``recipe_dir`` when that file exists, as stage
    data paths are; otherwise unchanged (an absolute path, or one relative to the working directory)."""
    path, sep, rest = value.partition(".py:") if value.count(".py:") == 1 else (value, "", "")
    path = path + (".py" if sep else "")
    if recipe_dir is None or Path(path).is_absolute() or not (recipe_dir / path).is_file():
        return value
    return str(recipe_dir / path) + (":" + rest if sep else "")


def resolve_entry_args(
    entry: RewardEntry, stages_dir: Path, device: str, recipe_dir: Path | None = None
) -> dict[str, Any]:
    """The entry's arguments with ``stage:NAME`` paths resolved, file arguments taken relative to the recipe's
    folder (when the file is there), and a reward model's device defaulted."""
    args = dict(entry.args)
    name = _FILE_ARGS.get(entry.source)
    if name is not None and isinstance(args.get(name), str):
        args[name] = _from_recipe_dir(args[name], recipe_dir)
    if entry.source not in ("reward_model", "ai_judge"):
        return args
    if "path" in args:
        args["path"] = stage_checkpoint(str(args["path"]), stages_dir, f"reward entry {entry.key!r} path")
    args.setdefault("device", device)
    return args


@dataclass
class ScoredBatch:
    """Rewards of a batch of completions.

    Attributes:
        rewards_B: total reward per completion (float32).
        excluded_B: True where a weighted source had an infrastructure error: train on it not at all.
        results: per entry name, each completion's `RewardResult`.
        metrics: per-source and total means, standard deviations, pass and error rates, seconds.
    """

    rewards_B: torch.Tensor
    excluded_B: torch.Tensor
    results: dict[str, list[RewardResult]]
    metrics: dict[str, float] = field(default_factory=dict)


class RewardScorer:
    """The reward of an RL stage.

    Args:
        entries: the stage's `reward:` list.
        stages_dir: the run's `stages/` folder (for ``stage:NAME`` paths).
        device: default device of reward models.
        recipe_dir: the recipe's folder (file arguments such as a constitution are relative to it).
    """

    def __init__(
        self, entries: Sequence[RewardEntry], stages_dir: Path, device: str, recipe_dir: Path | None = None
    ):
        sources = {
            entry.key: GuardedSource(
                build_reward_source(entry.source, **resolve_entry_args(entry, stages_dir, device, recipe_dir))
            )
            for entry in entries
        }
        self.composite = CompositeReward(list(entries), sources=sources)

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        examples: Sequence[Example],
        step: int,
        group_ids: Sequence[int] | None = None,
    ) -> ScoredBatch:
        result = self.composite(prompts, completions, examples=examples, step=step, group_ids=group_ids)
        metrics = dict(result.metrics)
        metrics["reward/total/std"] = _std(result.totals)
        for key, results in result.results.items():
            metrics[f"reward/{key}/std"] = _std([r.score for r in results if r.status != "error"])
        return ScoredBatch(
            rewards_B=torch.tensor(result.totals, dtype=torch.float32),
            excluded_B=torch.tensor(result.excluded, dtype=torch.bool),
            results=result.results,
            metrics=metrics,
        )

    def passed(self, scored: ScoredBatch) -> list[bool]:
        """Per completion: every source with a non-zero weight reported status "ok" (held-out accuracy)."""
        keys = [entry.key for entry in self.composite.entries if entry.weight_at(0) != 0 or entry.schedule is not None]
        return [all(scored.results[key][i].status == "ok" for key in keys) for i in range(len(scored.rewards_B))]

    def close(self) -> None:
        self.composite.close()


def _std(values: Sequence[float]) -> float:
    """Population standard deviation; NaN for no values."""
    if not values:
        return float("nan")
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
