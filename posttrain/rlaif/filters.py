"""Degenerate revisions: outputs of the reviser that must not become training data.

A revision is dropped (and counted by reason) when it is

- ``empty``: nothing but white space;
- ``unchanged``: the same text as the response it revises (white space aside): nothing was learnt;
- ``too_long``: cut off by the generation budget, or longer than the character limit;
- ``template_echo``: it repeats text of the prompt it was given (a template's fixed line or a
  principle's request) instead of answering, a common failure of small models.

>>> degenerate_reason("7", "Answer: 7", truncated=False, max_chars=100, echo_markers=["Critique:"])
>>> degenerate_reason("7", " 7 ", truncated=False, max_chars=100, echo_markers=[])
'unchanged'
>>> degenerate_reason("7", "Critique: none", truncated=False, max_chars=100, echo_markers=["Critique:"])
'template_echo'
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

REASONS = ("empty", "unchanged", "too_long", "template_echo")


def _normal(text: str) -> str:
    return " ".join(text.split())


def degenerate_reason(
    original: str, revision: str, *, truncated: bool, max_chars: int, echo_markers: Iterable[str]
) -> str | None:
    """Why ``revision`` of ``original`` is unusable (one of `REASONS`), or None if it is usable."""
    if not revision.strip():
        return "empty"
    if _normal(revision) == _normal(original):
        return "unchanged"
    if truncated or len(revision) > max_chars:
        return "too_long"
    if any(marker in revision for marker in echo_markers):
        return "template_echo"
    return None


def count_reasons(reasons: Iterable[str | None]) -> dict[str, int]:
    """How many of each reason (every reason listed, zeros included)."""
    counts = Counter(r for r in reasons if r is not None)
    return {reason: counts.get(reason, 0) for reason in REASONS}
