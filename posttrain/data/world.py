"""The built-in tiny world: arithmetic problems and a text corpus generated from a seed.

Everything here is plain Python (no torch) so that the recipe validator and the data tools can use it
without loading a model. A problem is identified by ``(operation, a, b)``; the train/test split is decided
by a hash of that identity, so the same problem never appears in both splits whatever its wording.

Difficulty levels:

    1: one-digit addition            3 + 5
    2: two-digit plus one-digit      23 + 5
    3: two-digit addition            23 + 45
    4: two-digit subtraction         71 - 28   (never negative)
    5: three-digit plus two-digit    312 + 47

Why the quickstart's figures move between machines, and what ``carry_slip`` is for. Measured on the
~0.85M-parameter built-in model (150 pre-training steps, then SFT at batch 16 x 128 packed tokens, lr 3e-3,
AMD EPYC, one thread per run): levels 2 and 3 are learned in a sharp transition whose timing depends on the
seed and on the CPU's float32 kernels, and its spread is wide. The old quickstart stopped SFT inside it (425
steps): 39.5% held-out on an AMD EPYC, 13% on an Intel Xeon. Training past it (~95%) would leave GRPO nothing
to learn: levels 4 and 5 stay at 0% greedy and under 1% pass@8 after SFT on levels 1-3, out of RL's reach.
``carry_slip`` makes the demonstrations a weak teacher's (that share of the sums that carry shown without the
carry): at SFT's plateau the model copies the teacher's odds, and GRPO with the math verifier, which pays only
right answers, learns to carry. At 0.5 the plateau is a coin flip per carry (held-out 0.63-0.80, GRPO +20 to
+35 points), but greedy answers then sit on a knife edge: PPO against the reward model, which cannot tell a
slipped answer (off by 10, a near miss) from the right one, moved held-out accuracy by -11 to +6 points at lr
5e-5-1e-4 (seeds 0 and 1, both kernel settings; lr 2e-5 moved it little but left the reward-model score of
sampled answers unraised in 1 of 3 runs). The quickstart uses 0.65: SFT's greedy answer to a carry is the slip,
while the teacher's carried answers (35%) keep the right one among GRPO's samples, and PPO moved held-out
accuracy by -1.1 to +5.1 points in the quickstart's grid (README.md).
Where the transition falls (loss on the answer tokens leaving ~0.8 for the plateau's ~0.1), with the
model's default initialisation (weights drawn with std 0.02, Qwen2's default):
- levels 1-3 drawn in turn, 2,000 steps: steps ~400, ~600 and ~900 for seeds 0, 1, 2;
- level 3 drawn three times as often (``levels: [1, 2, 3, 3, 3]``, recipes/quickstart.yaml), 1,500 steps:
  step ~500 for seed 0, and still under way at step 1,500 for seeds 1 and 2 (loss 0.39 and 0.47), giving SFT
  held-out 0.695 / 0.485 / 0.42 (600 problems); the stuck models get the units digit wrong (right in 50-60%
  of level-3 sums, seed 2), not the carry;
- larger batches for the same number of examples did not help (seed 0: batch 32 x 600 steps 0.367, batch 64 x
  300 steps 0.183, against 0.55 for batch 16 x 1,000 steps); neither did batch 8 x 2,000 steps (0.145), lr
  5e-3, no gradient clipping (loss at step 400 0.96 and 0.92 against 0.84), 8 attention heads of 16 instead
  of 4 of 32 (seeds 1/2: loss at step 1,000 0.75/0.64), a 1.8M model (hidden 192: 0.94/0.92 at step 500
  against 0.85/0.86), or 4x the pre-training (600 steps, or 300 steps at lr 2e-3: SFT loss 0.89-0.91 at
  step 600);
- pre-training documents ended with ``<|end|>`` (the chat end-of-turn) instead of ``<|endoftext|>`` slowed the
  transition badly: SFT held-out 0.218 and 0.088 after 1,500 steps (seeds 0 and 1).
What moved it: the initial weights' spread. Our reading (not measured directly): Qwen2's 0.02 is meant for models
hundreds of times wider; at width 128 it keeps the attention logits near zero, so attention starts out nearly
uniform and the heads that must pick out single digits take long to form. With ``model.init_std: 0.06`` (the
quickstart's setting) the transition falls at steps ~250-650 (carry_slip 0.5, data seeds 0-2, model seed 0) and
~450-650 in the quickstart's grid (carry_slip 0.65, seeds 0-2 for data and model, default and compatibility CPU
kernels), well inside 1,500 steps; one run (carry_slip 0.5, seed 0, compatibility kernels) learned in two steps,
at ~450 and ~1,200, so the margin is wide but not unlimited. A wider spread still (0.1) was slower (seed 0,
compatibility kernels: loss 0.80 at step 400 against 0.64). The grid's table is in README.md.
Level 1 has 6 test problems and level 2 has 75, so a held-out set of levels 1-3 is mostly level 3.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterator

LEVELS = (1, 2, 3, 4, 5)
_NAMES = ("Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou")
_ITEMS = ("apples", "pens", "books", "coins", "cards", "eggs", "shells", "stamps", "cups", "rocks")
TEST_SHARE = 0.1  # share of the problem space held out for evaluation


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem of the built-in world."""

    level: int
    op: str  # "+" or "-"
    a: int
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def split(self) -> str:
        """``"test"`` or ``"train"``, fixed by the problem's identity (not its wording)."""
        digest = hashlib.sha256(f"{self.op}{self.a},{self.b}".encode()).digest()
        return "test" if digest[0] < 256 * TEST_SHARE else "train"

    def question(self, rng: random.Random) -> str:
        """The problem in words: either a bare sum or a short story."""
        if rng.random() < 0.7:
            return f"What is {self.a} {self.op} {self.b}?"
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        if self.op == "+":
            return f"{name} has {self.a} {item} and gets {self.b} more. How many now?"
        return f"{name} has {self.a} {item} and gives away {self.b}. How many now?"


def answer_text(problem: Problem) -> str:
    """The reference answer the built-in SFT data teaches: just the number.

    A ~1M-parameter model learns to add digits that sit at fixed distances from the end of the question
    within a few hundred steps; a longer answer format only costs tokens (measured: writing the sum out
    before the result made the tiny model learn far more slowly, as it first has to learn to copy).
    """
    return str(problem.answer)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in ``text`` with thousands separators removed: how an answer is read (by the
    `exact_match` evaluator, the constitutional loop's `keep_answer`, and the revision demonstrations).

    >>> last_number("The answer is 1,024.")
    '1024'
    """
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def sample_problem(level: int, rng: random.Random) -> Problem:
    """Draws one problem of the given difficulty level."""
    if level == 1:
        return Problem(1, "+", rng.randint(0, 9), rng.randint(0, 9))
    if level == 2:
        return Problem(2, "+", rng.randint(10, 99), rng.randint(0, 9))
    if level == 3:
        return Problem(3, "+", rng.randint(10, 99), rng.randint(10, 99))
    if level == 4:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return Problem(4, "-", max(a, b), min(a, b))
    if level == 5:
        return Problem(5, "+", rng.randint(100, 999), rng.randint(10, 99))
    raise ValueError(f"unknown difficulty level {level}; levels are {LEVELS}")


def arithmetic_problems(
    split: str, count: int, seed: int, levels: tuple[int, ...] = LEVELS
) -> list[tuple[Problem, str]]:
    """``count`` problems of one split, levels in turn, each with its wording. A level listed twice is drawn
    about twice as often (``(1, 2, 3, 3, 3)``: level 3 three times as often as level 1 or 2).

    The train split samples with replacement (a problem may recur with other wording, like a second
    epoch); the test split holds distinct problems only. Level 1 has just 100 problems in all (about 10
    in the test split), so once those are used the test split continues with the other levels.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arithmetic/{split}/{seed}")
    out: list[tuple[Problem, str]] = []
    seen: set[Problem] = set()
    exhausted: set[int] = set()
    misses = {level: 0 for level in levels}
    turn = 0
    while len(out) < count:
        active = [level for level in levels if level not in exhausted]
        if not active:
            raise ValueError(f"the {split} split has fewer than {count} distinct problems at levels {levels}")
        level = active[turn % len(active)]
        turn += 1
        problem = sample_problem(level, rng)
        if problem.split != split or (split == "test" and problem in seen):
            misses[level] += 1
            if misses[level] > 5000:  # so many misses in a row: this level's share of the split is used up
                exhausted.add(level)
            continue
        misses[level] = 0
        seen.add(problem)
        out.append((problem, problem.question(rng)))
    return out


def has_carry(problem: Problem) -> bool:
    """Whether the units of a sum carry into the tens (``27 + 5``, ``38 + 46``; never for differences)."""
    return problem.op == "+" and problem.a % 10 + problem.b % 10 >= 10


def slipped_answer(problem: Problem) -> int:
    """The answer of a teacher that forgets the carry from the units into the tens (``27 + 5`` -> ``22``)."""
    return problem.answer - 10 if has_carry(problem) else problem.answer


def arithmetic_rows(
    split: str, count: int, seed: int, levels: tuple[int, ...] = LEVELS, carry_slip: float = 0.0
) -> list[dict]:
    """Chat rows ``{"messages", "answer", "level"}`` for SFT and evaluation.

    ``carry_slip`` makes the assistant turn a weak teacher's: that share of the sums that carry (drawn per
    row) shows :func:`slipped_answer`, while ``answer`` stays right. The slips have their own random stream,
    so the problems and wordings are those of ``carry_slip=0``.
    """
    if not 0.0 <= carry_slip <= 1.0:
        raise ValueError(f"carry_slip must be in [0, 1], got {carry_slip}")
    slips = random.Random(f"carry_slip/{split}/{seed}")
    rows = []
    for problem, question in arithmetic_problems(split, count, seed, levels):
        shown = problem.answer
        if carry_slip > 0 and has_carry(problem) and slips.random() < carry_slip:
            shown = slipped_answer(problem)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": str(shown)},
                ],
                "answer": str(problem.answer),
                "level": problem.level,
            }
        )
    return rows


_FILLER = (
    "The sun is warm.",
    "{name} likes {item}.",
    "{name} walks to the shop.",
    "The shop sells {item}.",
    "{name} and {other} play cards.",
    "It rains in the morning.",
    "{name} counts the {item}.",
    "A box holds many {item}.",
)


def corpus_documents(split: str, count: int, seed: int) -> Iterator[str]:
    """Pre-training documents: short stories and worked sums in plain text (no chat format).

    Sums come from the same split as the arithmetic problems, so pre-training never sees a test problem.
    """
    rng = random.Random(f"corpus/{split}/{seed}")
    made = 0
    while made < count:
        sentences = []
        for _ in range(rng.randint(3, 6)):
            kind = rng.random()
            if kind < 0.55:
                problem = sample_problem(rng.choice(LEVELS), rng)
                if problem.split != split:
                    continue
                if rng.random() < 0.5:
                    sentences.append(f"{problem.a} {problem.op} {problem.b} = {problem.answer}.")
                else:
                    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
                    verb = "gets" if problem.op == "+" else "gives away"
                    sentences.append(
                        f"{name} has {problem.a} {item} and {verb} {problem.b}. "
                        f"Now {name} has {problem.answer} {item}."
                    )
            else:
                template = rng.choice(_FILLER)
                sentences.append(
                    template.format(name=rng.choice(_NAMES), other=rng.choice(_NAMES), item=rng.choice(_ITEMS))
                )
        if sentences:
            made += 1
            yield " ".join(sentences)


def tokenizer_training_text(seed: int = 0) -> Iterator[str]:
    """Text the built-in tokenizer is trained on: both corpus splits and every question template."""
    yield from corpus_documents("train", 3000, seed)
    yield from corpus_documents("test", 300, seed)
    for split in ("train", "test"):
        for problem, question in arithmetic_problems(split, 400, seed):
            yield question + " " + answer_text(problem)
