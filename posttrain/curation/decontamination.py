"""Decontamination: removing training rows that contain rows of the recipe's own evaluation sets.

A training row is contaminated by an evaluation row when at least ``threshold`` of the evaluation row's
distinct n-grams (of words, `posttrain.curation.text.words`) occur in the training row. With the default
threshold (any n-gram, written as the smallest positive share) this is GPT-3's rule: a 13-gram shared with a
benchmark example flags it (Brown et al. 2020, arXiv 2005.14165, appendix C). Short rows: GPT-3 set N per
benchmark to the 5th-percentile example length in words, bounded to 8..13. An evaluation row here uses
``n = min(ngram, its own length)``, so a row shorter than ``ngram`` words is one n-gram (the whole row) that
must appear verbatim; rows shorter than ``min_words`` are too short to tell a leak from chance and are
skipped (counted in the report). Post-training evaluation rows are often one short question (the built-in
world's "What is 23 + 45?" is 5 words, 6 with its answer), which is why the floor is below GPT-3's 8.

What this catches: an evaluation row copied into a training row, whole or inside longer text (a few-shot
prompt, a forum thread), with other case, spacing or punctuation. What it misses: paraphrases and
translations ("Ann has 23 apples and gets 45 more" is the same problem as "What is 23 + 45?"); an embedding
or LLM-judge check (Yang et al. 2023, arXiv 2311.04850) is the next step and is not done here.

Hand-written (a dictionary of n-gram hashes): datatrove's decontamination block indexes lighteval tasks by
name, not the recipe's own files and rows, and needs its pipeline around it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from posttrain.curation.text import ngrams, preview, words


@dataclass
class EvaluationRow:
    """One row of an evaluation set, ready to be matched."""

    set_name: str
    text: str
    size: int  # n-gram length used for this row
    count: int  # its distinct n-grams


@dataclass
class Contamination:
    """The evaluation row a training row contains, and how much of it."""

    set_name: str
    evaluation_text: str
    overlap: float  # share of the evaluation row's n-grams found in the training row

    def describe(self) -> str:
        return f"{self.overlap:.0%} of {self.set_name} row {preview(self.evaluation_text, 80)!r}"


@dataclass
class ContaminationIndex:
    """The n-grams of every evaluation row, by n-gram.

    Args:
        ngram: the n-gram length for rows at least that long.
        threshold: the share of an evaluation row's n-grams that must occur in a training row to flag it.
        min_words: evaluation rows with fewer words are skipped.
    """

    ngram: int = 13
    threshold: float = 1e-9
    min_words: int = 4
    rows: list[EvaluationRow] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sizes: set[int] = field(default_factory=set)
    _index: dict[tuple[str, ...], list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, set_name: str, text: str) -> None:
        """Indexes one evaluation row of set ``set_name``."""
        tokens = words(text)
        if len(tokens) < self.min_words:
            self.skipped[set_name] += 1
            return
        size = min(self.ngram, len(tokens))
        grams = ngrams(tokens, size)
        number = len(self.rows)
        self.rows.append(EvaluationRow(set_name, text, size, len(grams)))
        self.sizes.add(size)
        for gram in grams:
            self._index[gram].append(number)

    def match(self, text: str) -> Contamination | None:
        """The evaluation row ``text`` contains most of (at or above the threshold), or None.

        >>> index = ContaminationIndex(ngram=13, min_words=4)
        >>> index.add("arithmetic", "What is 23 + 45? 68")
        >>> index.match("Practice: what is 23 + 45?  68. Next: what is 7 + 1?").set_name
        'arithmetic'
        >>> index.match("What is 23 + 46? 69") is None
        True
        """
        if not self.rows:
            return None
        tokens = words(text)
        hits: dict[int, int] = defaultdict(int)
        for size in self.sizes:
            for gram in ngrams(tokens, size):
                for number in self._index.get(gram, ()):
                    if self.rows[number].size == size:
                        hits[number] += 1
        best: Contamination | None = None
        for number, count in hits.items():
            row = self.rows[number]
            overlap = count / row.count
            if overlap >= self.threshold and (best is None or overlap > best.overlap):
                best = Contamination(row.set_name, row.text, overlap)
        return best

    def set_sizes(self) -> dict[str, int]:
        """How many rows of each evaluation set are indexed."""
        sizes: dict[str, int] = defaultdict(int)
        for row in self.rows:
            sizes[row.set_name] += 1
        return dict(sizes)
