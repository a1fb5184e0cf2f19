"""Recall and precision of each curation rule on planted rows.

Training rows: 2,000 clean random sentences (15-40 words from a 6,120-word vocabulary), 300 exact
duplicates of clean rows with case, spacing and punctuation changed, 300 near duplicates (one word of a
25-40-word clean row replaced: character-5-gram Jaccard 0.88-0.97, `test_planted_near_duplicates_are_near`),
200 rows with half the words of a clean row replaced (Jaccard ~0.3: clean, not duplicates), 300 contaminated
rows (an evaluation row of 8-30 words embedded between 5-15 random words on each side) and 500 more clean
rows: 3,600 rows. Evaluation set: 400 rows, of which 300 leak. Measured at this commit (seed 0): recall 1.0
and precision 1.0 for each of the three rules (300 of 300 planted rows removed by each, no other row removed).
The assertions leave a margin where the rule is probabilistic: exact and decontamination must be perfect,
near duplicates >= 0.95 both ways (MinHash estimates Jaccard with a standard error of ~0.03 at 128
permutations).
"""

from __future__ import annotations

import random

import pytest

from posttrain.curation.decontamination import ContaminationIndex
from posttrain.curation.dedup import ExactDuplicates, NearDuplicates, shingles
from posttrain.curation.rules import Rules
from posttrain.config.curate import QualitySpec

VOCABULARY = [f"{a}{b}{c}" for a in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze")
              for b in ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t")
              for c in ("a", "e", "i", "o", "u", "an", "en", "in", "on", "un", "ar", "er", "ir", "or", "ur",
                        "al", "el", "il", "ol", "ul", "as", "es", "is", "os", "us", "at", "et", "it", "ot", "ut",
                        "ax", "ex", "ix", "ox", "ux", "ay", "ey", "iy", "oy", "uy", "am")]


def sentence(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(VOCABULARY) for _ in range(rng.randint(low, high))]


def restyle(words: list[str], rng: random.Random) -> str:
    """The same words with other case, spacing and punctuation: an exact duplicate once normalised."""
    out = []
    for word in words:
        word = word.upper() if rng.random() < 0.3 else word.capitalize() if rng.random() < 0.3 else word
        out.append(word + (rng.choice([",", ".", "!", ";"]) if rng.random() < 0.2 else ""))
    return (" " * rng.randint(1, 3)).join(out)


def planted(seed: int = 0):
    """(training rows as (text, label), evaluation rows)."""
    rng = random.Random(seed)
    clean = [sentence(rng, 15, 40) for _ in range(2000)]
    rows = [(" ".join(words), "clean") for words in clean]
    evaluation = [" ".join(sentence(rng, 8, 30)) for _ in range(400)]
    rows += [(restyle(rng.choice(clean), rng), "dedup.exact") for _ in range(300)]
    long_rows = [words for words in clean if len(words) >= 25]
    for _ in range(300):
        words = list(rng.choice(long_rows))
        words[rng.randrange(len(words))] = rng.choice(VOCABULARY)
        rows.append((" ".join(words), "dedup.near"))
    for _ in range(200):  # half the words replaced: Jaccard ~0.3, a different row
        words = list(rng.choice(long_rows))
        for position in rng.sample(range(len(words)), len(words) // 2):
            words[position] = rng.choice(VOCABULARY)
        rows.append((" ".join(words), "clean"))
    for text in evaluation[:300]:
        rows.append((" ".join(sentence(rng, 5, 15)) + " " + text + " " + " ".join(sentence(rng, 5, 15)), "decontamination"))
    rows += [(" ".join(sentence(rng, 15, 40)), "clean") for _ in range(500)]
    head, tail = rows[:2000], rows[2000:]
    rng.shuffle(tail)  # planted rows after the originals they copy (the first one seen is kept)
    return head + tail, evaluation


@pytest.fixture(scope="module")
def outcome():
    rows, evaluation = planted()
    index = ContaminationIndex(ngram=13, min_words=4)
    for text in evaluation:
        index.add("heldout", text)
    rules = Rules(contamination=index, quality=QualitySpec(repetition=False), exact=ExactDuplicates(),
                  near=NearDuplicates(0.8, num_perm=128))
    verdicts = [rules.check({"text": text}, f"row {i}") for i, (text, _) in enumerate(rows)]
    return rows, verdicts, rules


@pytest.mark.parametrize("rule, min_recall, min_precision", [
    ("decontamination", 1.0, 1.0), ("dedup.exact", 1.0, 1.0), ("dedup.near", 0.95, 0.95),
])
def test_recall_and_precision_per_rule(outcome, rule, min_recall, min_precision):
    rows, verdicts, _ = outcome
    planted_rows = {i for i, (_, label) in enumerate(rows) if label == rule}
    removed = {i for i, verdict in enumerate(verdicts) if verdict is not None and verdict.rule == rule}
    recall = len(planted_rows & removed) / len(planted_rows)
    precision = len(planted_rows & removed) / max(len(removed), 1)
    assert recall >= min_recall, (rule, recall)
    assert precision >= min_precision, (rule, precision)


def test_clean_rows_are_kept_and_counted(outcome):
    rows, verdicts, rules = outcome
    clean_removed = [rows[i][0] for i, v in enumerate(verdicts) if v is not None and rows[i][1] == "clean"]
    assert clean_removed == []
    summary = rules.tally.summary()
    assert summary["rows_read"] == len(rows)
    assert summary["contaminated_by_set"] == {"heldout": summary["removed"]["decontamination"]}
    assert sum(summary["removed"].values()) + summary["rows_kept"] == len(rows)
    assert all(len(examples) <= 3 for examples in summary["examples"].values())


def test_planted_near_duplicates_are_near(outcome):
    """Each planted near duplicate's true Jaccard similarity to its nearest clean row is above the threshold
    (what the rule is asked to find), and no other pair of kept rows is."""
    rows, verdicts, _ = outcome
    clean = [set(shingles(text, "char", 5)) for text, label in rows[:2000]]
    for text, label in rows:
        if label == "dedup.near":
            near = set(shingles(text, "char", 5))
            best = max(len(near & other) / len(near | other) for other in clean)
            assert 0.8 < best < 1.0


def test_near_duplicates_must_hold_the_same_numbers():
    """Story rows of the built-in world: another name is the same problem, another number is not."""
    index = NearDuplicates(0.8)
    assert index.check("Eve has 6 eggs and gets 9 more. How many now?\n15", 0) is None
    assert index.check("Eve has 6 eggs and gets 5 more. How many now?\n11", 1) is None  # another problem
    assert index.check("Bob has 6 eggs and gets 9 more. How many now?\n15", 2)[0] == 0  # the same problem
    lenient = NearDuplicates(0.8, same_numbers=False)
    lenient.check("Eve has 6 eggs and gets 9 more. How many now?\n15", 0)
    assert lenient.check("Eve has 6 eggs and gets 5 more. How many now?\n11", 1) is not None
