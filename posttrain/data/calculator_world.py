"""Rows of the `builtin:calculator` world: the arithmetic world's problems answered with a calculator call.

SFT rows (``builtin_rows``) are tool-use demonstrations, four messages each::

    user: What is 71 - 28?   assistant: <<calculator: 71 - 28>>   tool: 43   assistant: 43

RL and evaluation prompts (`posttrain.rl.prompts`) are the same problems as ``{question, answer, level}``;
the environment (`posttrain.envs.calculator`) answers the calls. Levels default to 4 and 5, the ones the tiny
model cannot do in its head. Plain Python (no torch).
"""

from __future__ import annotations

from typing import Any

from posttrain.data.world import arithmetic_problems

CALCULATOR_LEVELS = (4, 5)
TOOL_NAME = "calculator"


def calculator_call(a: int, op: str, b: int) -> str:
    """The assistant message that calls the calculator in the built-in format.

    >>> calculator_call(71, "-", 28)
    '<<calculator: 71 - 28>>'
    """
    return f"<<{TOOL_NAME}: {a} {op} {b}>>"


def calculator_rows(
    split: str, count: int, seed: int, levels: tuple[int, ...] = CALCULATOR_LEVELS, demonstrations: bool = True
) -> list[dict[str, Any]]:
    """``count`` problems of ``split``: tool-use demonstrations (``messages`` with the call, the tool's answer
    and the final answer) or, with ``demonstrations=False``, prompts ``{question, answer, level}``."""
    rows = []
    for problem, question in arithmetic_problems(split, count, seed, levels):
        answer = str(problem.answer)
        if not demonstrations:
            rows.append({"question": question, "answer": answer, "level": problem.level})
            continue
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": calculator_call(problem.a, problem.op, problem.b)},
            {"role": "tool", "content": answer},
            {"role": "assistant", "content": answer},
        ]
        rows.append({"messages": messages, "answer": answer, "level": problem.level})
    return rows
