"""The built-in RLAIF demonstration: a constitution the arithmetic world can check, and SFT data that
teaches the tiny model to answer, critique, revise and judge in that world.

No instruct model is reachable offline, so the tiny model must learn its roles from demonstrations
(`builtin:rlaif`). Its answers come in several styles, most of which break a principle; a program knows
which (`posttrain.data.principle_checks`), so every claim of the loop is measured against ground truth:

    principle       follows                           broken by
    answer_format   "Answer: 12"                      "12", "The answer is 12."
    no_filler       no "well", "I think", ...         "Well, Answer: 12"
    brevity         at most 5 words                   "We work it out and get 12. Answer: 12"

Demonstrations (rendered with the constitution's own templates, so edited templates are taught too):

- answers: a question and an answer in one of the styles, each with the correct number. Most are
  ``Well, Answer: N``, so the SFT model's greedy answer breaks `no_filler`, and the fix (dropping the
  filler) leaves the number where the model worked it out, after ``Answer:``; the other styles are there to
  be sampled (the judge's pairs). Why one style dominates: with none dominant, greedy decoding blends the
  styles' openings ("Weswer: 14") and the number after such a blend is mostly wrong; with the bare number
  dominant, fixing its format by SFT on the revisions ``Answer: N`` moves the number into a context it was
  rarely computed in, and arithmetic accuracy falls;
- critiques: a principle's critique request and a response; the target names the fault or says
  ``No problem.``;
- revisions: the revision request, a response and its critique; the target is ``Answer: N`` with N the
  response's own last number (copied, not re-computed: revising must not change what was answered);
- judgements: the judge request and two responses that differ on the principle; the target is the label
  of the one that follows it, each label equally often.

Half of the critique, revision and judgement demonstrations use a wrong number, so the roles learn to read
the response rather than to solve the problem.

``demonstrations`` selects which of the four a dataset holds (their `SHARES` renormalised), so a recipe can
train the policy on answers and a separate critic/judge on the roles, as `recipes/rlaif_constitutional.yaml`
does: the tiny model trained on all four at once loses most of its arithmetic and still does not learn the
roles. Plain Python (no torch).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from posttrain.data import world
from posttrain.data.constitution import DEFAULT_TEMPLATES, JUDGE_LABELS, Constitution, Principle, parse_constitution

BUILTIN_RLAIF = "builtin:rlaif"
NO_PROBLEM = "No problem."

# style name -> (answer text of a number, share of the answer demonstrations); "Well, Answer: N" dominates
# (see the module docstring)
STYLES: dict[str, tuple[Callable[[str], str], float]] = {
    "clean": (lambda n: f"Answer: {n}", 0.08),
    "bare": (lambda n: n, 0.08),
    "sentence": (lambda n: f"The answer is {n}.", 0.08),
    "filler": (lambda n: f"Well, I think it is {n}.", 0.08),
    "filler_tagged": (lambda n: f"Well, Answer: {n}", 0.60),
    "long": (lambda n: f"We work it out and get {n}. Answer: {n}", 0.08),
}
# critique of a response that breaks a principle, by the principle's check
CRITIQUES = {
    "answer_format": "It does not end with Answer: N.",
    "no_filler": "It has filler words.",
    "max_words": "It is too long.",
}
# what a row of `builtin:rlaif` demonstrates, and its share of the rows
SHARES = {"answer": 0.4, "critique": 0.2, "revision": 0.2, "judge": 0.2}
DEMONSTRATIONS = tuple(SHARES)

# the reviser sees no question and the response last: it copies the response's number, next to its answer,
# rather than working the problem out again (recipes/constitutions/templates/revision.txt says the same)
ARITHMETIC_REVISION_TEMPLATE = "{revision_request}\nCritique: {critique}\nResponse: {response}"
ARITHMETIC_CONSTITUTION: dict[str, Any] = {
    "templates": {"revision": {"text": ARITHMETIC_REVISION_TEMPLATE}},
    "principles": [
        {
            "name": "answer_format",
            "critique_request": "Does the response end with Answer: N?",
            "revision_request": "Rewrite the response to end with Answer: N.",
            "judge_request": "Which response ends with Answer: N?",
            "check": "answer_format",
        },
        {
            "name": "no_filler",
            "critique_request": "Does the response use filler words?",
            "revision_request": "Rewrite the response without filler words.",
            "judge_request": "Which response has no filler words?",
            "check": "no_filler",
        },
        {
            "name": "brevity",
            "critique_request": "Is the response longer than five words?",
            "revision_request": "Rewrite the response in at most five words.",
            "judge_request": "Which response has at most five words?",
            "check": "max_words",
            "check_args": {"limit": 5},
        },
    ]
}


def arithmetic_constitution() -> Constitution:
    """The built-in world's constitution: the default critique and judge templates and
    `ARITHMETIC_REVISION_TEMPLATE` (`recipes/constitutions/arithmetic.yaml` holds the same principles and
    templates as files to edit)."""
    return parse_constitution(ARITHMETIC_CONSTITUTION, "<built-in arithmetic constitution>")


def styled_answer(number: str, rng: random.Random) -> tuple[str, str]:
    """(style name, answer text) with the styles' shares."""
    names = list(STYLES)
    name = rng.choices(names, weights=[STYLES[n][1] for n in names])[0]
    return name, STYLES[name][0](number)


def _any_style(number: str, rng: random.Random) -> str:
    return STYLES[rng.choice(list(STYLES))][0](number)


def _near_miss(answer: int, rng: random.Random) -> str:
    return str(max(0, answer + rng.choice((-10, -2, -1, 1, 2, 10))))


def critique_target(principle: Principle, response: str) -> str:
    """What the critic should say: the principle's fault, or `NO_PROBLEM`."""
    return NO_PROBLEM if principle.follows(response) else CRITIQUES[principle.check or ""]


def revision_target(response: str) -> str:
    """``Answer: N`` with the response's own last number (follows every built-in principle)."""
    return f"Answer: {world.last_number(response) or '0'}"


def _chat(user: str, assistant: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


def _judge_demo(constitution: Constitution, principle: Principle, question: str, number: str, rng: random.Random):
    good = [s for s, (fmt, _) in STYLES.items() if principle.follows(fmt(number))]
    bad = [s for s in STYLES if s not in good]
    if not good or not bad:
        return None
    better, worse = STYLES[rng.choice(good)][0](number), STYLES[rng.choice(bad)][0](number)
    if rng.random() < 0.5:
        return _chat(constitution.judge_prompt(principle, question, better, worse), JUDGE_LABELS[0], kind="judge")
    return _chat(constitution.judge_prompt(principle, question, worse, better), JUDGE_LABELS[1], kind="judge")


def rlaif_sft_rows(
    split: str, count: int, seed: int, constitution: Constitution | None = None,
    levels: tuple[int, ...] = world.LEVELS, demonstrations: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """SFT rows of the demonstration (see the module docstring), ``kind`` telling which role each shows.

    Args:
        split, count, seed, levels: which arithmetic problems the rows are built on (`world.arithmetic_problems`).
        constitution: principles and templates to render (default `arithmetic_constitution`). Only principles
            whose check has a built-in critique (`CRITIQUES`) get critique and judgement rows.
        demonstrations: the kinds of row to make (of `DEMONSTRATIONS`), in their `SHARES` renormalised;
            default all.

    >>> rows = rlaif_sft_rows("train", 200, seed=0)
    >>> sorted({row["kind"] for row in rows})
    ['answer', 'critique', 'judge', 'revision']
    >>> sorted({row["kind"] for row in rlaif_sft_rows("train", 200, seed=0, demonstrations=["critique", "judge"])})
    ['critique', 'judge']
    """
    constitution = constitution or arithmetic_constitution()
    kinds = list(demonstrations) if demonstrations is not None else list(SHARES)
    unknown = [kind for kind in kinds if kind not in SHARES]
    if unknown or not kinds:
        raise ValueError(f"unknown demonstrations {unknown or kinds!r}; valid: {', '.join(DEMONSTRATIONS)}")
    taught = [p for p in constitution.principles if p.check in CRITIQUES]
    if not taught and set(kinds) != {"answer"}:
        raise ValueError(f"{constitution.origin}: no principle uses a check the built-in demonstration teaches "
                         f"({', '.join(CRITIQUES)})")
    rng = random.Random(f"rlaif/{split}/{seed}")
    rows: list[dict[str, Any]] = []
    for problem, question in world.arithmetic_problems(split, count, seed, levels):
        answer = str(problem.answer)
        kind = rng.choices(kinds, weights=[SHARES[k] for k in kinds])[0]
        if kind == "answer":
            style, text = styled_answer(answer, rng)
            rows.append(_chat(question, text, kind="answer", style=style, answer=answer, level=problem.level))
            continue
        number = answer if rng.random() < 0.5 else _near_miss(problem.answer, rng)
        principle = rng.choice(taught)
        response = _any_style(number, rng)
        if kind == "critique":
            target = critique_target(principle, response)
            rows.append(_chat(constitution.critique_prompt(principle, question, response), target, kind="critique"))
        elif kind == "revision":
            critique = critique_target(principle, response)
            prompt = constitution.revision_prompt(principle, question, response, critique)
            rows.append(_chat(prompt, revision_target(response), kind="revision"))
        else:
            row = _judge_demo(constitution, principle, question, number, rng)
            if row is not None:
                rows.append(row)
    return rows


__all__ = ["ARITHMETIC_CONSTITUTION", "BUILTIN_RLAIF", "DEMONSTRATIONS", "DEFAULT_TEMPLATES", "arithmetic_constitution", "rlaif_sft_rows"]
