"""Combining reward terms: truncation cap, gates, per-source normalisation, scheduled weights.

`combine_rewards` is a pure function over per-source score and status lists. For each term, in order:

1. **Errors.** Examples where this source reported status "error" (infrastructure failure, unparseable
   gold answer) contribute 0, are left out of the normalisation statistics, and are flagged `excluded` —
   the stage should drop them from the loss rather than train on a made-up reward.
2. **Truncation.** A completion cut off before EOS (`truncated[i]`) has this term's score capped at 0
   (`min(score, 0)`: it keeps penalties but loses positive credit), unless the term sets
   `allow_truncated`. So a truncated completion can never earn full reward, even if its text happens to
   contain the right answer.
3. **Gate.** If the term is gated by another term, examples where that term's status is not "ok" get score
   0 here — e.g. correctness counts only when the format passed.
4. **Normalisation.** `group_zscore`: (score - group mean) / group std within each group (the completions
   of one prompt, as in GRPO, arXiv 2402.03300 eq. 3 applied per source); `batch_zscore`: the same over the
   batch. A group with zero spread gets 0 (no signal). Statistics use the population std.
5. **Weight.** The result is multiplied by the term's weight at this step (see `WeightSchedule`), and the
   total is the sum over terms.

`CompositeReward` builds the sources of a stage's `RewardEntry` list, calls each on the batch, and returns
totals together with every source's results and metrics (mean, pass rate, infrastructure-error rate, time).

>>> combine_rewards({"a": [1.0, 0.0], "b": [0.5, 0.5]}, {"a": ["ok", "wrong"], "b": ["ok", "ok"]},
...                 weights={"a": 1.0, "b": 2.0}).totals
[2.0, 1.0]
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.rewards.base import TRUNCATED_FIELD, Example, RewardResult, RewardSource, Status
from posttrain.rewards.config import NormalizeMode, RewardEntry, check_reward_entries
from posttrain.rewards.registry import build_reward_source


@dataclass(frozen=True)
class CombinedRewards:
    """Output of `combine_rewards`.

    Attributes:
        totals: Total reward per example.
        contributions: Per term, each example's weighted contribution to the total.
        excluded: Per example, whether any weighted term reported an infrastructure error for it.
    """

    totals: list[float]
    contributions: dict[str, list[float]]
    excluded: list[bool]


def zscore(values: Sequence[float], mask: Sequence[bool], groups: Sequence[Hashable] | None = None) -> list[float]:
    """Z-score `values` within each group (or over all) using only entries where `mask` is True.

    Masked-out entries get 0. A group whose std is ~0 gets 0 everywhere.

    >>> zscore([1.0, 0.0, 3.0, 3.0], [True] * 4, groups=[0, 0, 1, 1])
    [1.0, -1.0, 0.0, 0.0]
    """
    keys: Sequence[Hashable] = groups if groups is not None else [0] * len(values)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        if mask[index]:
            members.setdefault(key, []).append(index)
    result = [0.0] * len(values)
    for indices in members.values():
        mean = sum(values[i] for i in indices) / len(indices)
        std = math.sqrt(sum((values[i] - mean) ** 2 for i in indices) / len(indices))
        if std > 1e-8:
            for i in indices:
                result[i] = (values[i] - mean) / std
    return result


def combine_rewards(
    scores: Mapping[str, Sequence[float]],
    statuses: Mapping[str, Sequence[Status]],
    *,
    weights: Mapping[str, float],
    normalize: Mapping[str, NormalizeMode] | None = None,
    gates: Mapping[str, str | None] | None = None,
    truncated: Sequence[bool] | None = None,
    allow_truncated: Mapping[str, bool] | None = None,
    group_ids: Sequence[Hashable] | None = None,
) -> CombinedRewards:
    """Combine per-source scores into one reward per example (rules in the module docstring).

    Args:
        scores: Per term name, one raw score per example.
        statuses: Per term name, one status per example ("ok", "wrong", "error").
        weights: Per term name, its weight at this step.
        normalize: Per term name, "none" (default), "group_zscore" or "batch_zscore".
        gates: Per term name, the name of the term that must pass for it to count (or None).
        truncated: Per example, whether the completion was cut off before EOS.
        allow_truncated: Per term name, whether truncated completions may keep positive score.
        group_ids: Per example, its group (needed by "group_zscore").

    Raises:
        ValueError: On inconsistent lengths or names, or "group_zscore" without `group_ids`.
    """
    normalize, gates, allow_truncated = normalize or {}, gates or {}, allow_truncated or {}
    size = len(next(iter(scores.values()))) if scores else 0
    cut = list(truncated) if truncated is not None else [False] * size
    for name in scores:
        if len(scores[name]) != size or len(statuses[name]) != size or name not in weights:
            raise ValueError(f"term {name!r}: needs {size} scores, {size} statuses and a weight")
    if len(cut) != size or (group_ids is not None and len(group_ids) != size):
        raise ValueError(f"truncated and group_ids must have one entry per example ({size})")
    contributions: dict[str, list[float]] = {}
    excluded = [False] * size
    for name, raw in scores.items():
        valid = [s != "error" for s in statuses[name]]
        values = _term_values(
            name, raw, valid, statuses, gates.get(name), cut, allow_truncated.get(name, False),
            normalize.get(name, "none"), group_ids,
        )
        weight = weights[name]
        contributions[name] = [weight * value if valid[i] else 0.0 for i, value in enumerate(values)]
        if weight != 0.0:
            excluded = [flag or not valid[i] for i, flag in enumerate(excluded)]
    totals = [sum(contributions[name][i] for name in contributions) for i in range(size)]
    return CombinedRewards(totals, contributions, excluded)


def _term_values(
    name: str, raw: Sequence[float], valid: list[bool], statuses: Mapping[str, Sequence[Status]], gate: str | None,
    cut: list[bool], allow_truncated: bool, mode: NormalizeMode | str, group_ids: Sequence[Hashable] | None,
) -> list[float]:
    """One term's values before its weight: truncation cap, gate, then normalisation (errors score 0)."""
    if gate is not None and gate not in statuses:
        raise ValueError(f"term {name!r} is gated by unknown term {gate!r}")
    values = [
        (min(score, 0.0) if cut[i] and not allow_truncated else float(score)) if valid[i] else 0.0
        for i, score in enumerate(raw)
    ]
    if gate is not None:
        values = [value if statuses[gate][i] == "ok" else 0.0 for i, value in enumerate(values)]
    if mode == "group_zscore":
        if group_ids is None:
            raise ValueError(f"term {name!r} uses group_zscore but no group ids were given")
        return zscore(values, valid, group_ids)
    if mode == "batch_zscore":
        return zscore(values, valid)
    if mode != "none":
        raise ValueError(f"term {name!r}: unknown normalize mode {mode!r}")
    return values


@dataclass(frozen=True)
class CompositeResult:
    """Output of `CompositeReward` on one batch.

    Attributes:
        totals: Total reward per example.
        excluded: Per example, True where a weighted source had an infrastructure error (drop from the loss).
        results: Per term name, each example's `RewardResult` (raw score, status, reason).
        contributions: Per term name, each example's weighted contribution to the total.
        metrics: Scalars to log, e.g. "reward/math/mean", "reward/math/error_rate", "reward/math/seconds".
    """

    totals: list[float]
    excluded: list[bool]
    results: dict[str, list[RewardResult]]
    contributions: dict[str, list[float]]
    metrics: dict[str, float] = field(default_factory=dict)


class CompositeReward:
    """The reward of an RL stage: builds each entry's source and combines them on every batch.

    Args:
        entries: The stage's `reward:` list (`RewardEntry` objects or plain dicts).
        sources: Pre-built sources by entry name (tests, or sources built elsewhere); others are built.
    """

    def __init__(
        self, entries: Sequence[RewardEntry | Mapping[str, Any]], *, sources: Mapping[str, RewardSource] | None = None
    ) -> None:
        self.entries = [
            entry if isinstance(entry, RewardEntry) else RewardEntry.model_validate(entry) for entry in entries
        ]
        if not self.entries:
            raise ValueError("a composite reward needs at least one reward entry")
        check_reward_entries(self.entries)
        given = dict(sources or {})
        self.sources: dict[str, RewardSource] = {}
        for entry in self.entries:
            source = given.pop(entry.key, None) or build_reward_source(entry.source, **entry.args)
            source.name = entry.key
            self.sources[entry.key] = source
        if given:
            raise ValueError(f"pre-built sources {sorted(given)} match no reward entry")

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        examples: Sequence[Example] | None = None,
        step: int = 0,
        group_ids: Sequence[Hashable] | None = None,
    ) -> CompositeResult:
        """Score a batch with every source and combine.

        Args:
            prompts: One prompt per completion.
            completions: The completions.
            examples: Per-example fields for the sources; `truncated` (bool) marks completions cut off
                before EOS.
            step: Training step (drives weight schedules).
            group_ids: Group of each completion for group_zscore; default: completions of identical
                prompts form a group.
        """
        rows: Sequence[Example] = examples if examples is not None else [{}] * len(completions)
        results: dict[str, list[RewardResult]] = {}
        seconds: dict[str, float] = {}
        for key, source in self.sources.items():
            begin = time.perf_counter()
            results[key] = source(prompts, completions, examples=rows, step=step)
            seconds[key] = time.perf_counter() - begin
        combined = combine_rewards(
            {key: [r.score for r in rs] for key, rs in results.items()},
            {key: [r.status for r in rs] for key, rs in results.items()},
            weights={entry.key: entry.weight_at(step) for entry in self.entries},
            normalize={entry.key: entry.normalize for entry in self.entries},
            gates={entry.key: entry.gate for entry in self.entries},
            truncated=[bool(row.get(TRUNCATED_FIELD, False)) for row in rows],
            allow_truncated={entry.key: entry.allow_truncated for entry in self.entries},
            group_ids=list(group_ids) if group_ids is not None else list(prompts),
        )
        metrics = self._metrics(results, seconds, combined, step)
        return CompositeResult(combined.totals, combined.excluded, results, combined.contributions, metrics)

    def _metrics(
        self, results: dict[str, list[RewardResult]], seconds: dict[str, float], combined: CombinedRewards, step: int
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for entry in self.entries:
            key, batch = entry.key, results[entry.key]
            valid = [r.score for r in batch if r.status != "error"]
            metrics[f"reward/{key}/mean"] = sum(valid) / len(valid) if valid else float("nan")
            metrics[f"reward/{key}/pass_rate"] = sum(r.status == "ok" for r in batch) / max(len(batch), 1)
            metrics[f"reward/{key}/error_rate"] = sum(r.status == "error" for r in batch) / max(len(batch), 1)
            metrics[f"reward/{key}/seconds"] = seconds[key]
            metrics[f"reward/{key}/weight"] = entry.weight_at(step)
        totals = combined.totals
        metrics["reward/total/mean"] = sum(totals) / len(totals) if totals else float("nan")
        metrics["reward/excluded_rate"] = sum(combined.excluded) / max(len(totals), 1)
        return metrics

    def close(self) -> None:
        """Close every source."""
        for source in self.sources.values():
            source.close()
