"""`builtin:calculator`: the arithmetic world's hardest levels with a calculator tool.

Levels 4 (two-digit subtraction) and 5 (three-digit plus two-digit addition) of `posttrain.data.world`
stay near 0% for the built-in tiny model after SFT on levels 1-3 (see that module's docstring): it cannot
do them in its head. With the calculator it need only copy the two numbers and the operation into a call,
then copy the result into its answer::

    user:       Ann has 71 apples and gives away 28. How many now?
    assistant:  <<calculator: 71 - 28>>
    tool:       43
    assistant:  43

The environment runs the calls of each assistant message (`ToolEnvironment`), and the first message
without a call is the final answer: reward 1 when its last number is the row's `answer`, else 0. The
demonstrations and prompts are `posttrain.data.calculator_world`.

>>> env = CalculatorEnvironment()
>>> env.reset({"messages": [{"role": "user", "content": "What is 71 - 28?"}], "answer": "43"})[0]["content"]
'What is 71 - 28?'
>>> env.step("<<calculator: 71 - 28>>").messages
[{'role': 'tool', 'content': '43'}]
>>> env.step("43").reward
1.0
"""

from __future__ import annotations

import ast
import operator

from posttrain.data.world import last_number
from posttrain.envs.registry import register_environment
from posttrain.envs.tool_calls import ToolFormat
from posttrain.envs.protocol import ToolEnvironment

_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}  # fmt: skip
_MAX_DIGITS = 30  # operands and results past this are refused (no power operator, so nothing explodes)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        value = _OPERATORS[type(node.op)](left, right)
        if abs(value) >= 10**_MAX_DIGITS:
            raise ValueError("the result is too large")
        return value
    raise ValueError(f"only numbers, + - * / // % and parentheses are allowed, not {ast.dump(node)[:60]}")


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression exactly.

    Args:
        expression: Numbers with + - * / // % and parentheses, e.g. "71 - 28".
    """
    # a syntax tree of numbers and arithmetic operators only: Python's `eval` would run any code
    if len(expression) > 200:
        raise ValueError("the expression is longer than 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {expression!r} as arithmetic") from None
    value = _evaluate(tree)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


@register_environment("builtin:calculator")
class CalculatorEnvironment(ToolEnvironment):
    """The calculator world (see the module docstring).

    Args:
        tool_format: ``builtin`` (``<<calculator: 71 - 28>>``, the tiny model's) or ``hermes``.
    """

    tools = (calculator,)

    def __init__(self, tool_format: ToolFormat = "builtin") -> None:
        super().__init__(tool_format)

    def final_reward(self, message: str) -> float:
        return float(last_number(message) == str(self.example.get("answer")))
