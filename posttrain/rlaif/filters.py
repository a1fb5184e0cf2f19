"""Degenerate revisions: outputs of the reviser that must not become training data.

A revision is dropped (and counted by reason) when it is

- ``empty``: nothing but white space;
- ``unchanged``: the same text as the response it revises (white space aside): nothing was learnt;
- ``too_long``: cut off by the generation budget, or longer than the character limit;
- ``template_echo``: it repeats text of the prompt it was given (a template's fixed line or a
  principle's request) instead of answering, a common failure of small models;
- ``changed_answer`` (only when asked, ``keep_answer``): its last number differs from the response's, so
  it would teach a different answer rather than a better-behaved one (for tasks whose answer is a number).

>>> degenerate_reason("7", "Answer: 7", truncated=False, max_chars=100, echo_markers=["Critique:"])
>>> degenerate_reason("7", " 7 ", truncated=False, max_chars=100, echo_markers=[])
'unchanged'
>>> degenerate_reason("7", "Critique: none", truncated=False, max_chars=100, echo_markers=["Critique:"])
'template_echo'
>>> degenerate_reason("So 7.", "Answer: 8", truncated=False, max_chars=100, echo_markers=[], keep_answer=True)
'changed_answer'
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from posttrain.data.world import last_number

REASONS = ("empty", "unchanged", "too_long", "template_echo", "changed_answer")


def _normal(text: str) -> str:
    return " ".join(text.split())


def degenerate_reason(
    original: str, revision: str, *, truncated: bool, max_chars: int, echo_markers: Iterable[str],
    keep_answer: bool = False,
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
    if keep_answer and last_number(revision) != last_number(original):
        return "changed_answer"
    return None


def count_reasons(reasons: Iterable[str | None]) -> dict[str, int]:
    """How many of each reason (every reason listed, zeros included)."""
    counts = Counter(r for r in reasons if r is not None)
    return {reason: counts.get(reason, 0) for reason in REASONS}
