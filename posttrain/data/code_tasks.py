"""Built-in code tasks for the tiny world: small generated Python functions with tests.

About 40 tasks from 24 families — add a constant, multiply, max of two, absolute value, is-even, reverse a
string, repeat a character N times... — where parameterised families draw their constants from a seeded
RNG. Each task is a dict ready to be a dataset row for the "code" reward source:

    {"task_id", "family", "prompt", "entry_point", "tests", "reference_solution"}

`tests` is the source of a `check(candidate)` function whose expected values were computed by running the
reference solution on fixed inputs, so the two always agree. The train/test split is a deterministic
shuffle by seed.

>>> tasks = load_code_tasks(seed=0)
>>> len(tasks), tasks[0]["entry_point"] == load_code_tasks(seed=0)[0]["entry_point"]
(42, True)
>>> sorted({len(load_code_tasks("train")), len(load_code_tasks("test"))})
[10, 32]
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

CodeTask = dict[str, str]

_INTS = [-7, -1, 0, 1, 2, 5, 12, 40]
_PAIRS = [(3, 9), (9, 3), (-4, -2), (0, 0), (7, -7), (15, 15)]
_STRINGS = ["", "a", "abc", "hello", "racecar", "Data 42"]
_LISTS = [[1, 2, 3], [5], [-3, 10, -1, 4], [0, 0, 0], [9, -9, 8]]


@dataclass(frozen=True)
class _Family:
    """One family of tasks: how to name, describe, implement and probe a function for a parameter k."""

    name: str  # entry point; "{k}" is replaced by the parameter
    args: str  # the signature's arguments, e.g. "x" or "a, b"
    description: str  # completes "that ..."; may contain {k}
    body: str  # the reference implementation's return expression; may contain {k}
    inputs: list[tuple[Any, ...]]
    parameters: Callable[[random.Random], list[int]] | None = None  # None: one unparameterised task


def _draw(count: int, low: int, high: int) -> Callable[[random.Random], list[int]]:
    return lambda rng: sorted(rng.sample(range(low, high + 1), count))


def _ints(values: list[int]) -> list[tuple[Any, ...]]:
    return [(value,) for value in values]


_FAMILIES = [
    _Family("add_{k}", "x", "returns x plus {k}", "x + {k}", _ints(_INTS), _draw(4, 2, 20)),
    _Family("subtract_{k}", "x", "returns x minus {k}", "x - {k}", _ints(_INTS), _draw(3, 2, 20)),
    _Family("times_{k}", "x", "returns x multiplied by {k}", "x * {k}", _ints(_INTS), _draw(4, 2, 9)),
    _Family("mod_{k}", "x", "returns the remainder of x divided by {k}", "x % {k}", _ints(_INTS), _draw(3, 2, 9)),
    _Family(
        "is_divisible_by_{k}", "x", "returns True if x is divisible by {k}, else False", "x % {k} == 0",
        _ints([*_INTS, 24, 35]), _draw(3, 2, 7),
    ),
    _Family(
        "repeat_char_{k}", "c", "returns the character c repeated {k} times", "c * {k}",
        [("a",), ("z",), ("#",)], _draw(4, 2, 8),
    ),
    _Family("power_{k}", "x", "returns x raised to the power {k}", "x ** {k}", _ints(_INTS), _draw(2, 2, 4)),
    _Family(
        "clamp_to_{k}", "x", "returns x limited to the range 0 to {k} inclusive", "min(max(x, 0), {k})",
        _ints(_INTS), _draw(3, 3, 30),
    ),
    _Family("max_of_two", "a, b", "returns the larger of a and b", "a if a >= b else b", _PAIRS),
    _Family("min_of_two", "a, b", "returns the smaller of a and b", "a if a <= b else b", _PAIRS),
    _Family("absolute_value", "x", "returns the absolute value of x", "x if x >= 0 else -x", _ints(_INTS)),
    _Family("is_even", "x", "returns True if x is even, else False", "x % 2 == 0", _ints(_INTS)),
    _Family("is_odd", "x", "returns True if x is odd, else False", "x % 2 == 1", _ints(_INTS)),
    _Family("square", "x", "returns x squared", "x * x", _ints(_INTS)),
    _Family("negate", "x", "returns minus x", "-x", _ints(_INTS)),
    _Family("reverse_string", "s", "returns the string s reversed", "s[::-1]", [(s,) for s in _STRINGS]),
    _Family("string_length", "s", "returns the number of characters in s", "len(s)", [(s,) for s in _STRINGS]),
    _Family("double_string", "s", "returns s written twice in a row", "s + s", [(s,) for s in _STRINGS]),
    _Family("to_upper", "s", "returns s in upper case", "s.upper()", [(s,) for s in _STRINGS]),
    _Family(
        "first_char", "s", "returns the first character of s, or an empty string if s is empty", "s[:1]",
        [(s,) for s in _STRINGS],
    ),
    _Family(
        "count_vowels", "s", "returns how many of the characters of s are lower-case vowels (a, e, i, o, u)",
        "sum(1 for ch in s if ch in 'aeiou')", [(s,) for s in _STRINGS],
    ),
    _Family("sum_list", "xs", "returns the sum of the numbers in the list xs", "sum(xs)", [(xs,) for xs in _LISTS]),
    _Family(
        "max_list", "xs", "returns the largest number in the non-empty list xs", "max(xs)", [(xs,) for xs in _LISTS]
    ),
    _Family("list_length", "xs", "returns the number of items in the list xs", "len(xs)", [(xs,) for xs in _LISTS]),
]  # fmt: skip


def _build(family: _Family, k: int | None) -> CodeTask:
    fill = (lambda text: text.replace("{k}", str(k))) if k is not None else (lambda text: text)
    entry_point, body = fill(family.name), fill(family.body)
    solution = f"def {entry_point}({family.args}):\n    return {body}\n"
    namespace: dict[str, Any] = {}
    exec(solution, namespace)  # our own reference code: compute the expected values the tests assert
    function = namespace[entry_point]
    asserts = [f"    assert candidate({', '.join(map(repr, args))}) == {function(*args)!r}" for args in family.inputs]
    return {
        "task_id": f"code/{entry_point}",
        "family": family.name.replace("{k}", "k"),
        "prompt": f"Write a Python function {entry_point}({family.args}) that {fill(family.description)}.\n",
        "entry_point": entry_point,
        "tests": "def check(candidate):\n" + "\n".join(asserts) + "\n",
        "reference_solution": solution,
    }


def load_code_tasks(
    split: Literal["all", "train", "test"] = "all", *, seed: int = 0, test_fraction: float = 0.25
) -> list[CodeTask]:
    """The built-in code tasks.

    Args:
        split: "all", or the "train" / "test" part of a deterministic shuffle.
        seed: Seeds the families' constants and the split.
        test_fraction: Share of tasks in the test split.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    rng = random.Random(seed)
    tasks: list[CodeTask] = []
    for family in _FAMILIES:
        parameters = family.parameters(rng) if family.parameters is not None else [None]
        tasks.extend(_build(family, k) for k in parameters)
    if split == "all":
        return tasks
    order = list(range(len(tasks)))
    random.Random(seed + 1).shuffle(order)
    test_count = max(1, round(len(tasks) * test_fraction))
    chosen = sorted(order[:test_count]) if split == "test" else sorted(order[test_count:])
    return [tasks[index] for index in chosen]
