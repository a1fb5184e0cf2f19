"""Exact and near-duplicate removal.

Exact duplicates: rows whose normalised text (`posttrain.curation.text.normalised`: lower-cased words, so
case, spacing and punctuation do not count) hashes the same; the first one seen is kept.

Near duplicates: MinHash (Broder 1997, "On the resemblance and containment of documents") estimates the
Jaccard similarity of two rows' shingle sets, and locality-sensitive hashing over bands of the signature
finds candidate pairs without comparing every pair (Leskovec, Rajaraman & Ullman, "Mining of Massive
Datasets", ch. 3.4). A row whose estimated Jaccard similarity to an earlier kept row reaches ``threshold``
is dropped. The default 0.8 is Lee et al. 2022 ("Deduplicating Training Data Makes Language Models Better",
arXiv 2107.06499 §4.1). They shingle web documents by 5 words; post-training rows are often one sentence,
where a one-word edit changes most word 5-grams, so the default here shingles by 5 characters of the
normalised text (word shingles are a setting). Rows shorter than ``min_words`` words are left to exact
deduplication: in "What is 10 + 0?" and "What is 10 + 1?" one character is a different problem, yet 9 of
their 11 character 5-grams are shared (Jaccard 0.82). For the same reason two rows count as near duplicates
only if they hold the same numbers in the same order (``same_numbers``, on by default): "Eve has 6 eggs and
gets 9 more" and "... gets 5 more" share 85% of their shingles but are different problems (measured on the
built-in world's story rows: without this check 134 of 1,346 near-duplicate removals were other problems).

Library: `datasketch` (MinHash, MinHashLSH; numpy only, in-memory), not `datatrove`: datatrove's MinHash is
a four-step pipeline of executors writing signature and bucket files to disk, built for terabytes of web
text; a stage that curates up to millions of rows on one machine needs an index it can query row by row
as the stream passes. Memory: the LSH index and the kept signatures take about 1 KB per kept row at 128
permutations (~1 GB per million rows); past that, the README's note on datatrove applies.
"""

from __future__ import annotations

import re
import zlib
from typing import Literal

import numpy as np

from posttrain.curation.text import normalised, text_digest, words

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class ExactDuplicates:
    """Remembers the hashes of the normalised texts seen; `check` says which earlier row a text repeats."""

    def __init__(self) -> None:
        self._first: dict[bytes, int] = {}

    def check(self, text: str, index: int) -> int | None:
        """The index of the earlier row with the same normalised text, or None (and ``text`` is remembered).

        >>> seen = ExactDuplicates()
        >>> seen.check("What is 2 + 3?", 0), seen.check("what is 2 +  3", 1)
        (None, 0)
        """
        digest = text_digest(text)
        first = self._first.get(digest)
        if first is None:
            self._first[digest] = index
        return first


def shingles(text: str, unit: Literal["char", "word"], size: int) -> list[bytes]:
    """The distinct shingles of a row's normalised text; a text shorter than one shingle is its own shingle.

    >>> shingles("Ab cd", "char", 3)
    [b'ab ', b'b c', b' cd']
    """
    if unit == "word":
        tokens = words(text)
        items = [" ".join(tokens[i : i + size]) for i in range(max(1, len(tokens) - size + 1))]
    else:
        flat = normalised(text)
        items = [flat[i : i + size] for i in range(max(1, len(flat) - size + 1))]
    return [item.encode() for item in dict.fromkeys(items)]


class NearDuplicates:
    """A MinHash-LSH index of the rows kept so far (`datasketch`); `check` finds a near duplicate of a new row.

    Args:
        threshold: Jaccard similarity from which two rows count as near duplicates.
        num_perm: MinHash permutations (signature length); the estimate's standard error is about
            ``sqrt(J (1 - J) / num_perm)``, 0.035 at J = 0.8 and 128 permutations.
        unit, size: how rows are shingled (`shingles`).
        min_words: rows with fewer words are not checked (nor indexed).
        same_numbers: a candidate must hold the same numbers, in order, to count.
        seed: the permutations' seed.
    """

    def __init__(self, threshold: float, num_perm: int = 128, unit: Literal["char", "word"] = "char", size: int = 5,
                 min_words: int = 10, same_numbers: bool = True, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self.threshold, self.num_perm, self.unit, self.size, self.seed = threshold, num_perm, unit, size, seed
        self.min_words, self.same_numbers = min_words, same_numbers
        self._numbers: dict[int, int] = {}  # kept rows' numbers, hashed
        # candidates are confirmed against the stored signatures, so a false positive costs one comparison while a
        # false negative is a duplicate kept: the bands are tuned for recall (datasketch's default weighs both 0.5)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self._signatures: dict[int, np.ndarray] = {}  # kept rows' signatures, to confirm LSH candidates
        # permutations are built once, then copied; shingles are hashed by CRC-32 (C code, ~3x faster than
        # datasketch's default SHA-1 in Python; the permutations that follow spread its values)
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)

    def signature(self, text: str):
        """The MinHash of a row's shingles."""
        minhash = self._template.copy()
        minhash.update_batch(shingles(text, self.unit, self.size))
        return minhash

    def check(self, text: str, index: int) -> tuple[int, float] | None:
        """``(earlier row, estimated Jaccard)`` of the most similar kept row at or above the threshold, or
        None (and the row joins the index). A row shorter than ``min_words`` is neither checked nor indexed."""
        if len(words(text)) < self.min_words:
            return None
        minhash = self.signature(text)
        numbers = hash(tuple(_NUMBER.findall(text))) if self.same_numbers else 0
        best: tuple[int, float] | None = None
        for candidate in self._lsh.query(minhash):
            if self._numbers[candidate] != numbers:
                continue
            # the signature's values are below 2**32 (datasketch masks them), so they are stored as uint32
            similarity = float(np.mean(self._signatures[candidate] == minhash.hashvalues))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (candidate, similarity)
        if best is None:
            self._lsh.insert(index, minhash, check_duplication=False)
            self._signatures[index] = minhash.hashvalues.astype(np.uint32)
            self._numbers[index] = numbers
        return best
