"""Quality filters: each takes a row's text and returns why it fails (a short reason), or None to keep it.

- length bounds, in words and characters;
- repetition, after Gopher's quality filters (Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
  Insights from Training Gopher", arXiv 2112.11446, appendix A.1.1, table A1): the share of characters in
  the most frequent word n-gram (n = 2, 3, 4; Gopher's limits 0.20, 0.18, 0.16) and the share of characters
  in duplicated n-grams (n = 5..10; limits 0.15 down to 0.10). Applied to rows of at least 50 words, Gopher's
  own lower bound on a document's length: in a short chat row one repeated phrase ("What is the capital of
  France?" / "The capital of France is Paris.") is most of the text, and the limits would drop it;
- character classes: the share of letters, digits and whitespace (Gopher keeps documents whose words
  mostly contain a letter; here, as a character count, so that arithmetic rows are not dropped) and the
  share of characters outside the scripts the recipe allows (a cheap language check without a model);
- the user's own function, ``path/to/file.py:function``: called with the row (a dict) and returning True to
  keep it (or False / a reason string to drop it).

Hand-written: these are a few lines each over one row; datatrove's `GopherRepetitionFilter` and
`GopherQualityFilter` implement the same rules but only inside its pipeline of `Document` objects.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

from posttrain.curation.text import words

# Gopher's repetition limits (arXiv 2112.11446, table A1)
TOP_NGRAM_LIMITS = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAM_LIMITS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
_NOT_PLAIN = re.compile(r"[^\w\s]|_")  # neither a letter, a digit nor whitespace (counted in C, not per character)


class FilterError(RuntimeError):
    """A user filter raised or returned something other than a bool or a string."""


def top_ngram_share(tokens: list[str], n: int) -> float:
    """The share of word characters covered by the most frequent n-gram's occurrences (Gopher table A1).

    >>> round(top_ngram_share("the cat the cat the cat sat".split(), 2), 3)
    0.857
    """
    if len(tokens) < n:
        return 0.0
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(t) for t in tokens)
    return count * sum(len(t) for t in gram) / total if total else 0.0


def duplicate_ngram_share(tokens: list[str], n: int) -> float:
    """The share of word characters inside n-grams that occur more than once (each word counted once).

    >>> round(duplicate_ngram_share("a b c d e a b c d e x".split(), 5), 3)
    0.909
    """
    if len(tokens) < n:
        return 0.0
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    covered = [False] * len(tokens)
    for i in range(len(tokens) - n + 1):
        if counts[tuple(tokens[i : i + n])] > 1:
            covered[i : i + n] = [True] * n
    total = sum(len(t) for t in tokens)
    return sum(len(t) for t, c in zip(tokens, covered) if c) / total if total else 0.0


def repetition_reason(text: str, scale: float = 1.0, min_words: int = 50) -> str | None:
    """Why ``text`` is too repetitive under Gopher's limits (each multiplied by ``scale``), or None; texts of
    fewer than ``min_words`` words are not judged."""
    tokens = words(text)
    if len(tokens) < min_words:
        return None
    for n, limit in TOP_NGRAM_LIMITS.items():
        share = top_ngram_share(tokens, n)
        if share > limit * scale:
            return f"most frequent {n}-gram covers {share:.0%} of the text (limit {limit * scale:.0%})"
    for n, limit in DUPLICATE_NGRAM_LIMITS.items():
        share = duplicate_ngram_share(tokens, n)
        if share > limit * scale:
            return f"repeated {n}-grams cover {share:.0%} of the text (limit {limit * scale:.0%})"
        if share == 0:  # a repeated (n+1)-gram contains a repeated n-gram: none longer repeats either
            break
    return None


def character_reason(text: str, min_alphanumeric: float, scripts: tuple[str, ...] | None) -> str | None:
    """Why ``text``'s characters look wrong: too few letters/digits/spaces, or letters outside ``scripts``
    (Unicode script prefixes of the character names, e.g. ``LATIN``), or None.

    >>> character_reason("$$$ ### !!!", 0.5, None)
    'letters, digits and spaces are 18% of the characters (minimum 50%)'
    >>> character_reason("Привет мир", 0.5, ("LATIN",))
    'letters outside LATIN: 100%'
    """
    if not text:
        return "empty text"
    plain = len(text) - len(_NOT_PLAIN.findall(text))
    if plain / len(text) < min_alphanumeric:
        return f"letters, digits and spaces are {plain / len(text):.0%} of the characters (minimum {min_alphanumeric:.0%})"
    if scripts:
        letters = [ch for ch in text if ch.isalpha()]
        foreign = sum(not unicodedata.name(ch, "").startswith(scripts) for ch in letters)
        if letters and foreign / len(letters) > 0.5:
            return f"letters outside {'/'.join(scripts)}: {foreign / len(letters):.0%}"
    return None


def length_reason(text: str, min_words: int, max_words: int | None, max_chars: int | None) -> str | None:
    """Why ``text`` is too short or too long, or None."""
    count = len(words(text))
    if count < min_words:
        return f"{count} words < min_words {min_words}"
    if max_words is not None and count > max_words:
        return f"{count} words > max_words {max_words}"
    if max_chars is not None and len(text) > max_chars:
        return f"{len(text)} characters > max_chars {max_chars}"
    return None


def user_filter_reason(function: Callable[[dict[str, Any]], Any], name: str, row: Any, where: str) -> str | None:
    """Runs the user's filter on one row: True keeps it; False or a string (the reason) drops it.

    Raises:
        FilterError: the filter raised, or returned something else; the message names it and the row.
    """
    try:
        verdict = function(row)
    except Exception as error:
        raise FilterError(f"filter {name} raised on {where}: {type(error).__name__}: {error} (row: {str(row)[:200]})") from error
    if verdict is True:
        return None
    if verdict is False:
        return f"{name} returned False"
    if isinstance(verdict, str):
        return verdict
    raise FilterError(f"filter {name} returned {type(verdict).__name__} on {where}; return True to keep the row, "
                      "False or a reason string to drop it")
