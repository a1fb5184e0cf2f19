"""The curation rules applied to a stream of rows, in order, and the tally of what each removed.

Order: decontamination, quality filters (length, repetition, characters, the user's filter), exact
duplicates, near duplicates. A removed row counts under the first rule that removes it; contamination comes
first so that every contaminated row is reported against its evaluation set, and duplicates are looked up
among the rows that passed every other rule (a low-quality row never shadows a later good copy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.curation.decontamination import ContaminationIndex
from posttrain.curation.dedup import ExactDuplicates, NearDuplicates
from posttrain.curation.quality import character_reason, length_reason, repetition_reason, user_filter_reason
from posttrain.curation.text import preview, row_text

RULES = ("decontamination", "quality.length", "quality.repetition", "quality.characters", "quality.filter",
         "dedup.exact", "dedup.near")


@dataclass
class Removal:
    """Why one row was removed."""

    rule: str
    reason: str
    where: str
    text: str
    evaluation_set: str | None = None  # decontamination: the set whose row the text contains

    def record(self) -> dict[str, str]:
        return {"rule": self.rule, "reason": self.reason, "where": self.where, "text": self.text}


@dataclass
class Tally:
    """Counts per rule and per evaluation set, with the first few removed rows of each rule."""

    examples_per_rule: int = 3
    seen: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)
    contaminated_by_set: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def add(self, removal: Removal | None) -> None:
        self.seen += 1
        if removal is None:
            self.kept += 1
            return
        self.removed[removal.rule] += 1
        shown = self.examples.setdefault(removal.rule, [])
        if len(shown) < self.examples_per_rule:
            shown.append({"where": removal.where, "reason": removal.reason, "text": preview(removal.text)})

    def summary(self) -> dict[str, Any]:
        """What the manifest records: counts per rule (every rule, zeros included) and examples."""
        return {
            "rows_read": self.seen,
            "rows_kept": self.kept,
            "removed": {rule: self.removed.get(rule, 0) for rule in RULES},
            "contaminated_by_set": dict(self.contaminated_by_set),
            "examples": self.examples,
        }


@dataclass
class Rules:
    """The configured rules; `check` returns the `Removal` of a row, or None to keep it.

    Args:
        contamination: the evaluation sets' index (None: decontamination off).
        quality: a `posttrain.config.curate.QualitySpec` (None: no quality rule, as in a training stage).
        exact, near: the duplicate indexes (None: that rule is off).
        user_filter: ``(name, function)`` of the user's filter, or None.
    """

    contamination: ContaminationIndex | None
    quality: Any
    exact: ExactDuplicates | None
    near: NearDuplicates | None
    user_filter: tuple[str, Callable[[dict[str, Any]], Any]] | None = None
    tally: Tally = field(default_factory=Tally)
    _count: int = 0

    def check(self, row: Any, where: str) -> Removal | None:
        """Applies every rule to one row (remembering it for the duplicate rules if it is kept)."""
        text = row_text(row)
        removal = self._first_failure(row, text, where)
        if removal is not None and removal.evaluation_set is not None:
            self.tally.contaminated_by_set[removal.evaluation_set] += 1
        self.tally.add(removal)
        self._count += 1
        return removal

    def _first_failure(self, row: Any, text: str, where: str) -> Removal | None:
        quality = self.quality
        if self.contamination is not None:
            hit = self.contamination.match(text)
            if hit is not None:
                return Removal("decontamination", hit.describe(), where, text, hit.set_name)
        checks: list[tuple[str, Callable[[], str | None]]] = [] if quality is None else [
            ("quality.length", lambda: length_reason(text, quality.min_words, quality.max_words, quality.max_chars)),
            ("quality.repetition", lambda: repetition_reason(text, quality.repetition_scale, quality.repetition_min_words)
                                                if quality.repetition else None),
            ("quality.characters", lambda: character_reason(text, quality.min_alphanumeric,
                                                            tuple(quality.scripts) if quality.scripts else None)),
        ]
        if self.user_filter is not None:
            name, function = self.user_filter
            checks.append(("quality.filter", lambda: user_filter_reason(function, name, row, where)))
        for rule, check in checks:
            reason = check()
            if reason is not None:
                return Removal(rule, reason, where, text)
        if self.exact is not None:
            first = self.exact.check(text, self._count)
            if first is not None:
                return Removal("dedup.exact", f"same normalised text as row #{first}", where, text)
        if self.near is not None:
            similar = self.near.check(text, self._count)
            if similar is not None:
                return Removal("dedup.near", f"Jaccard ~{similar[1]:.2f} with row #{similar[0]}", where, text)
        return None
