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

Common text (GPT-3's rule, same appendix): an evaluation n-gram found in more than ``common_rows`` (10)
distinct training rows is a stock phrase or boilerplate, not a leak, and is ignored. That takes a first pass
over the training rows (`count`, then `settle`) before rows are matched. Distinct rows are told apart by their
normalised text, so one leaked row repeated a thousand times counts once and is still removed. Without it, the
built-in world's held-out corpus (whose one-sentence documents, "It rains in the morning.", are filler the
training corpus shares by design) flagged 1,654 of the quickstart's 3,000 pre-training documents.

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

from posttrain.curation.text import ngrams, preview, text_digest, words


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
        common_rows: evaluation n-grams in more distinct training rows than this are ignored (None: never);
            takes effect once the training rows were counted (`count`, `settle`).
    """

    ngram: int = 13
    threshold: float = 1e-9
    min_words: int = 4
    common_rows: int | None = None
    rows: list[EvaluationRow] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sizes: set[int] = field(default_factory=set)
    common: set[tuple[str, ...]] = field(default_factory=set)  # the n-grams ignored as common text
    _index: dict[tuple[str, ...], list[int]] = field(default_factory=lambda: defaultdict(list))
    _found_in: dict[tuple[str, ...], set[bytes]] = field(default_factory=dict)  # n-gram -> training rows' digests

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

    def _grams_in(self, text: str) -> list[tuple[str, ...]]:
        """The indexed n-grams that occur in ``text`` (any of the indexed lengths)."""
        tokens = words(text)
        return [gram for size in self.sizes for gram in ngrams(tokens, size) if gram in self._index]

    def count(self, text: str) -> None:
        """First pass: notes which indexed n-grams a training row holds (each n-gram keeps at most
        ``common_rows + 1`` distinct rows, so memory stays bounded)."""
        if self.common_rows is None:
            return
        grams = self._grams_in(text)
        if grams:
            digest = text_digest(text)
            for gram in grams:
                found = self._found_in.setdefault(gram, set())
                if len(found) <= self.common_rows:
                    found.add(digest)

    def settle(self) -> None:
        """Ends the first pass: the n-grams in more than ``common_rows`` distinct training rows become `common`.

        >>> index = ContaminationIndex(common_rows=2)
        >>> index.add("corpus", "It rains in the morning.")
        >>> for day in ("Mon", "Tue", "Wed"):
        ...     index.count(f"{day}: it rains in the morning.")
        >>> index.settle()
        >>> index.match("Thu: it rains in the morning.") is None
        True
        """
        if self.common_rows is not None:
            self.common |= {gram for gram, found in self._found_in.items() if len(found) > self.common_rows}
        self._found_in.clear()

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
        hits: dict[int, int] = defaultdict(int)
        for gram in set(self._grams_in(text)) - self.common:
            for number in self._index[gram]:
                if self.rows[number].size == len(gram):
                    hits[number] += 1
        best: Contamination | None = None
        for number, count in hits.items():
            row = self.rows[number]
            overlap = count / row.count
            if overlap >= self.threshold and (best is None or overlap > best.overlap):
                best = Contamination(row.set_name, row.text, overlap)
        return best

    def common_examples(self, limit: int = 3) -> list[str]:
        """A few of the n-grams ignored as common text, for the report."""
        return [" ".join(gram) for gram in sorted(self.common)[:limit]]

    def set_sizes(self) -> dict[str, int]:
        """How many rows of each evaluation set are indexed."""
        sizes: dict[str, int] = defaultdict(int)
        for row in self.rows:
            sizes[row.set_name] += 1
        return dict(sizes)
