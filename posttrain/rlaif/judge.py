"""The pairwise AI judge: which of two responses better follows a principle, asked in both orders.

A language model prefers whichever response it is shown first (or second) more often than the content
warrants. So every pair is judged twice, with the responses swapped (the position-bias check of Zheng et al.
2023, arXiv 2306.05685 §3.3, as used for AI feedback in Lee et al. 2023, arXiv 2309.00267 §2.1), and gets a
label only when both orders prefer the same response; otherwise it is a tie, dropped and counted.

A `Scorer` sees a batch of `JudgeQuery` and returns, per query, a margin: > 0 when the response shown
first (``A``) is better, < 0 when the second (``B``) is; `posttrain.rlaif.language_model` reads it from a
causal LM's next-token log-probabilities of the two labels. This module is plain Python: tests use stubs.

>>> first_wins = lambda queries: [1.0 for _ in queries]   # a judge with pure position bias
>>> judge_pairs(first_wins, [("p", "q", "x", "y")], principle_of=lambda name: name)[0].label is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence


@dataclass(frozen=True)
class JudgeQuery:
    """One judgement: under ``principle``, is ``first`` (shown as A) better than ``second`` (shown as B)?"""

    principle: Any  # a `posttrain.data.constitution.Principle` (anything the scorer understands)
    prompt: str
    first: str
    second: str


Scorer = Callable[[list[JudgeQuery]], list[float]]


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on a pair (a, b).

    Attributes:
        label: ``"a"`` or ``"b"`` (the preferred response) when both orders agree, else None (a tie).
        forward: margin with a shown first (> 0: a better).
        backward: margin with b shown first (> 0: b better).
    """

    label: Literal["a", "b"] | None
    forward: float
    backward: float


def decide(forward: float, backward: float, margin: float = 0.0) -> Literal["a", "b"] | None:
    """The label of a pair from its two margins: both orders must prefer the same response by > ``margin``.

    >>> decide(0.7, -0.2), decide(-0.7, 0.2), decide(0.7, 0.2), decide(0.0, -1.0)
    ('a', 'b', None, None)
    """
    if forward > margin and backward < -margin:
        return "a"
    if forward < -margin and backward > margin:
        return "b"
    return None


def judge_pairs(
    scorer: Scorer,
    pairs: Sequence[tuple[Any, str, str, str]],
    principle_of: Callable[[Any], Any] = lambda principle: principle,
    margin: float = 0.0,
) -> list[Verdict]:
    """Judges pairs ``(principle, prompt, a, b)`` in both orders with one scorer call for all queries."""
    queries: list[JudgeQuery] = []
    for principle, prompt, a, b in pairs:
        resolved = principle_of(principle)
        queries.append(JudgeQuery(resolved, prompt, a, b))
        queries.append(JudgeQuery(resolved, prompt, b, a))
    margins = scorer(queries) if queries else []
    if len(margins) != len(queries):
        raise ValueError(f"the judge scorer returned {len(margins)} margins for {len(queries)} queries")
    verdicts = []
    for index in range(len(pairs)):
        forward, backward = float(margins[2 * index]), float(margins[2 * index + 1])
        verdicts.append(Verdict(decide(forward, backward, margin), forward, backward))
    return verdicts


def win_score(verdict: Verdict, side: Literal["a", "b"]) -> float:
    """1 if ``side`` won, 0 if it lost, 0.5 for a tie: a reward from a pairwise verdict."""
    if verdict.label is None:
        return 0.5
    return 1.0 if verdict.label == side else 0.0


@dataclass
class AgreementCounter:
    """Judge verdicts against a program's ground truth (a pair's truth: "a", "b" or None for no difference).

    Attributes:
        pairs: pairs judged; labelled: pairs the judge labelled (both orders agreed); ties: the others.
        agree / disagree: labelled pairs whose ground truth has a preference, with the judge or against it.
        labelled_without_truth: labelled pairs whose ground truth sees no difference (or has no check).
    """

    pairs: int = 0
    labelled: int = 0
    ties: int = 0
    agree: int = 0
    disagree: int = 0
    labelled_without_truth: int = 0

    def add(self, verdict: Verdict, truth: Literal["a", "b"] | None) -> None:
        self.pairs += 1
        if verdict.label is None:
            self.ties += 1
            return
        self.labelled += 1
        if truth is None:
            self.labelled_without_truth += 1
        elif truth == verdict.label:
            self.agree += 1
        else:
            self.disagree += 1

    def metrics(self, prefix: str = "judge/") -> dict[str, float]:
        checked = self.agree + self.disagree
        return {
            f"{prefix}pairs": float(self.pairs),
            f"{prefix}labelled": float(self.labelled),
            f"{prefix}ties_dropped": float(self.ties),
            f"{prefix}agreement": self.agree / checked if checked else float("nan"),
            f"{prefix}agreement_n": float(checked),
            f"{prefix}labelled_without_truth": float(self.labelled_without_truth),
        }


def ground_truth(principle: Any, a: str, b: str) -> Literal["a", "b"] | None:
    """Which response the principle's program check prefers: the one that follows it when the other does
    not; None when both or neither follow it, or the principle has no check."""
    follows_a, follows_b = principle.follows(a), principle.follows(b)
    if follows_a is None or follows_a == follows_b:
        return None
    return "a" if follows_a else "b"
