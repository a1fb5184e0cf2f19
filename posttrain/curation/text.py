"""The text of a data row as curation sees it: one string per row, normalised, split into words and n-grams.

Every rule (duplicates, contamination, quality) reads a row through `row_text`, so a chat row, a plain-text
row and an RL prompt row are compared on the same footing. Words are lower-cased runs of letters and digits;
the arithmetic symbols ``+ - * / = < > %`` count as words too (``3 + 5`` and ``3 - 5`` are different problems),
other punctuation is dropped, as GPT-3's contamination analysis normalised text (Brown et al. 2020,
arXiv 2005.14165, appendix C: lower-cased, punctuation removed).

>>> words(row_text({"messages": [{"role": "user", "content": "What is 3 + 5?"}, {"role": "assistant", "content": "8"}]}))
('what', 'is', '3', '+', '5', '8')
>>> normalised("  Hello,   WORLD! ")
'hello world'
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from typing import Any

_WORD = re.compile(r"[^\W_]+|[+\-*/=<>%]")
# the keys whose strings make up a row's text, in this order (other columns are labels: `answer`, `level`)
TEXT_KEYS = ("text", "prompt", "question", "completion", "response", "chosen", "rejected")


def row_text(row: Any) -> str:
    """The text of a row: its messages' contents, or its text fields (`TEXT_KEYS`), joined by newlines.

    >>> row_text({"question": "What is 2 + 3?", "answer": "5"})
    'What is 2 + 3?'
    """
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return str(row)
    parts: list[str] = []
    for key in ("messages", *TEXT_KEYS):
        value = row.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):  # chat messages (also `prompt` given as messages)
            parts += [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return "\n".join(parts)


@functools.lru_cache(maxsize=8)
def words(text: str) -> tuple[str, ...]:
    """Lower-cased words of ``text`` (Unicode NFKC first, so full-width digits match ASCII ones); every rule
    asks for the same row's words in turn, so the last few answers are kept."""
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def normalised(text: str) -> str:
    """The words of ``text`` joined by single spaces: what exact deduplication hashes."""
    return " ".join(words(text))


def text_digest(text: str) -> bytes:
    """A 16-byte hash of the normalised text (collisions: ~2^-64 at 4 billion rows)."""
    return hashlib.blake2b(normalised(text).encode(), digest_size=16).digest()


def ngrams(tokens: tuple[str, ...] | list[str], n: int) -> set[tuple[str, ...]]:
    """The distinct ``n``-grams of ``tokens``; a row shorter than ``n`` has none.

    >>> sorted(ngrams(["a", "b", "c"], 2))
    [('a', 'b'), ('b', 'c')]
    """
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def preview(text: str, limit: int = 160) -> str:
    """A one-line excerpt of ``text`` for reports."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
