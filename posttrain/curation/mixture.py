"""Mixtures of curated sources and curriculum order: which rows of each source go out, and in what order.

A mixture works on row positions (source number, row number), not rows, so the rows themselves can stay on
disk (`posttrain.curation.stream`). Each source takes:

- ``count`` rows, or all its rows when neither ``count`` nor ``weight`` is given; or
- with weights ``w_i``, ``round(total * w_i / sum(w))`` rows. Without ``total``, the largest mixture that
  keeps the weights without drawing a row twice: ``total = min_i(available_i * sum(w) / w_i)``.

Without replacement a source's rows are a seeded sample (a permutation's prefix); asking for more rows than a
source has left after curation is an error naming the source. A source that curation emptied (e.g. rows that
all leaked from an evaluation set) contributes nothing, and the others keep their counts; a source that was
empty to begin with is an error. With replacement, whole passes over the source
come first and the remainder is a sample, so a source asked for 2.5x its rows shows each row 2 or 3 times
(lower variance than independent draws). Continued pre-training's replay mix is the same thing: the new
domain and a replay source (e.g. `builtin:corpus`) with weights such as 3 : 1.

Curriculum (Bengio et al. 2009, "Curriculum learning", ICML): rows sorted by a difficulty (a field or a
function of the row), easy to hard, ties in a seeded random order; optionally cut into equal phases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Share:
    """What the mixture asks of one source."""

    label: str
    available: int  # rows left after curation
    weight: float | None = None
    count: int | None = None
    read: int | None = None  # rows read before curation (None: as many as are available)


def target_counts(shares: list[Share], total: int | None, replacement: bool) -> list[int]:
    """Rows to take from each source.

    >>> target_counts([Share("a", 100, weight=3), Share("b", 10, weight=1)], None, False)
    [30, 10]
    >>> target_counts([Share("a", 100, weight=3), Share("b", 10, weight=1)], 80, True)
    [60, 20]

    Raises:
        ValueError: a source that had no rows to begin with, or (without replacement) is asked for more rows
            than it has; the message names it.
    """
    for share in shares:
        if share.read == 0:
            raise ValueError(f"mixture source {share.label!r} has no rows")
    emptied = {i for i, s in enumerate(shares) if s.available == 0}
    weighted = [s for i, s in enumerate(shares) if s.weight is not None and i not in emptied]
    weight_sum = sum(s.weight for s in weighted)
    if weight_sum > 0:
        if total is None:
            total = int(min(s.available * weight_sum / s.weight for s in weighted if s.weight > 0))
        counts = [int(round(total * s.weight / weight_sum)) if s.weight else 0 for s in shares]
    else:
        counts = [s.count if s.count is not None else s.available for s in shares]
    counts = [0 if i in emptied else count for i, count in enumerate(counts)]
    for share, count in zip(shares, counts):
        if not replacement and count > share.available:
            raise ValueError(
                f"mixture source {share.label!r} has {share.available} rows after curation, {count} are asked for; "
                "lower its count or weight, or set `mixture.replacement: true`"
            )
    return counts


def take(available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` row numbers out of ``available``: whole passes first, then a sample without replacement.

    >>> sorted(np.bincount(take(4, 10, np.random.default_rng(0)), minlength=4).tolist())
    [2, 2, 3, 3]
    """
    passes, rest = divmod(count, available) if available else (0, 0)
    parts = [np.arange(available)] * passes + [rng.permutation(available)[:rest]]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def curriculum_order(difficulty: np.ndarray, descending: bool, rng: np.random.Generator) -> np.ndarray:
    """The order of rows by difficulty (easy first unless ``descending``), ties in random order.

    >>> curriculum_order(np.array([3.0, 1.0, 2.0]), False, np.random.default_rng(0)).tolist()
    [1, 2, 0]
    """
    tiebreak = rng.permutation(len(difficulty))
    key = -difficulty if descending else difficulty
    return np.lexsort((tiebreak, key))


def phase_bounds(rows: int, phases: int) -> list[tuple[int, int]]:
    """``[start, end)`` of ``phases`` nearly equal consecutive parts of ``rows`` rows.

    >>> phase_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    edges = [0] + [-(-rows * i // phases) for i in range(1, phases)] + [rows]
    return list(zip(edges[:-1], edges[1:]))
