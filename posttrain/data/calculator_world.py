"""Rows of the `builtin:calculator` world: the arithmetic world's problems answered with a calculator call.

SFT rows (``builtin_rows``) are tool-use demonstrations, four messages each::

    user: What is 71 - 28?   assistant: <<calculator: 71 - 28>>   tool: 43   assistant: 43

RL and evaluation prompts (`posttrain.rl.prompts`) are the same problems as ``{question, answer, level}``;
the environment (`posttrain.envs.calculator`) answers the calls. Levels default to 4 and 5, the ones the tiny
model cannot do in its head. Plain Python (no torch).

``tool_share`` makes the demonstrations a weak teacher's, as ``carry_slip`` does in `posttrain.data.world`:
the teacher calls the calculator in only that share of them (drawn per row) and answers the others at once
with an estimate made in its head, the two numbers rounded to the nearest ten (``71 - 28`` -> ``70 - 30`` ->
``40``; right only when the roundings cancel, as in ``73 - 23``)::

    user: What is 71 - 28?   assistant: 40

Why: with every demonstration calling the tool, SFT's model makes its errors by miscopying a digit into the
call with confidence (token entropy ~0.1), which GRPO's sampled episodes rarely correct (measured in
recipes/tools_calculator.yaml's header). The idea of the weak teacher: the model learns to call the tool in
about that share of its sampled episodes, and whether to call it is one early token (``<`` or a digit) that
the environment's reward (right answers only) can teach: calls with a right copy are paid, estimates
almost never. recipes/tools_calculator.yaml's header has what it measured (GRPO +72 to +89 points).
"""

from __future__ import annotations

import random
from typing import Any

from posttrain.data.world import Problem, arithmetic_problems

CALCULATOR_LEVELS = (4, 5)
TOOL_NAME = "calculator"


def calculator_call(a: int, op: str, b: int) -> str:
    """The assistant message that calls the calculator in the built-in format.

    >>> calculator_call(71, "-", 28)
    '<<calculator: 71 - 28>>'
    """
    return f"<<{TOOL_NAME}: {a} {op} {b}>>"


def estimate(problem: Problem) -> int:
    """The weak teacher's answer without the tool: both numbers rounded to the nearest ten (halves up).

    >>> estimate(Problem(4, "-", 71, 28)), estimate(Problem(5, "+", 312, 47)), estimate(Problem(4, "-", 73, 23))
    (40, 360, 50)
    """
    a, b = (10 * ((number + 5) // 10) for number in (problem.a, problem.b))
    return a + b if problem.op == "+" else a - b


def calculator_rows(
    split: str,
    count: int,
    seed: int,
    levels: tuple[int, ...] = CALCULATOR_LEVELS,
    demonstrations: bool = True,
    tool_share: float = 1.0,
) -> list[dict[str, Any]]:
    """``count`` problems of ``split``: tool-use demonstrations (``messages`` with the call, the tool's answer
    and the final answer) or, with ``demonstrations=False``, prompts ``{question, answer, level}``.

    ``tool_share`` (in (0, 1]) is the share of demonstrations, drawn per row, that call the tool; the others
    answer with :func:`estimate` (see the module docstring) while ``answer`` stays right. The draws have their
    own random stream, so the problems and wordings are those of ``tool_share=1``.
    """
    if not 0.0 < tool_share <= 1.0:
        raise ValueError(f"tool_share must be in (0, 1], got {tool_share}")
    draws = random.Random(f"tool_share/{split}/{seed}")
    rows = []
    for problem, question in arithmetic_problems(split, count, seed, levels):
        answer = str(problem.answer)
        if not demonstrations:
            rows.append({"question": question, "answer": answer, "level": problem.level})
            continue
        if tool_share < 1.0 and draws.random() >= tool_share:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": str(estimate(problem))}]
        else:
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": calculator_call(problem.a, problem.op, problem.b)},
                {"role": "tool", "content": answer},
                {"role": "assistant", "content": answer},
            ]
        rows.append({"messages": messages, "answer": answer, "level": problem.level})
    return rows
