"""Principles a program can check: the ground truth that measures the critic, the reviser and the judge.

A check reads one response and says whether it follows the principle. A constitution's principle names a
check (`check: answer_format`, arguments in `check_args`) to have its violation rate and the judge's
agreement measured; principles without one are still used, just not measured.

>>> PRINCIPLE_CHECKS.get("answer_format")("So it is 7. Answer: 7")
True
>>> PRINCIPLE_CHECKS.get("max_words")("one two three", limit=2)
False
"""

from __future__ import annotations

import re
from typing import Callable

from posttrain.registry import Registry

Check = Callable[..., bool]
PRINCIPLE_CHECKS: Registry[Check] = Registry("principle check")
register_check = PRINCIPLE_CHECKS.register

_ANSWER_LINE = re.compile(r"(?:^|\s)Answer: -?\d+$")
FILLER_WORDS = ("well", "basically", "hmm", "i think", "you know")


@register_check("answer_format")
def answer_format(response: str) -> bool:
    """The response ends with ``Answer: N`` (N an integer)."""
    return bool(_ANSWER_LINE.search(response.strip()))


@register_check("no_filler")
def no_filler(response: str, words: tuple[str, ...] | list[str] = FILLER_WORDS) -> bool:
    """None of the filler words or phrases occurs (case-insensitive, whole words)."""
    text = " " + re.sub(r"[^a-z0-9 ]+", " ", response.lower()) + " "
    return not any(f" {word} " in text for word in words)


@register_check("max_words")
def max_words(response: str, limit: int = 5) -> bool:
    """At most ``limit`` whitespace-separated words (and not empty)."""
    return 0 < len(response.split()) <= limit


def run_check(name: str, args: dict, response: str) -> bool:
    """Applies check ``name`` with ``args`` to one response."""
    return bool(PRINCIPLE_CHECKS.get(name)(response, **args))
