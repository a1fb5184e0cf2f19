"""The "python" reward source: the user's own function, given in the recipe as `path/to/file.py:function`.

The file is loaded with importlib from its path (it need not be on `sys.path` or in a package). The
function is called either per example, ``function(prompt, completion, example) -> score`` (default), or,
with `batched: true`, once per batch, ``function(prompts, completions, examples) -> list of scores``.
A score is a real number (bools count) or a `RewardResult`.

Its output is checked on every batch: an exception, a wrong number of scores, or a score of the wrong type
(or NaN/inf) raises `RewardFunctionError` naming the function and the offending example — at the first
batch, before a run trains on garbage. When a batched function raises, it is called again one example at a
time to name the example that triggers the error.

>>> load_function("rewards.py")
Traceback (most recent call last):
...
ValueError: python reward source: function must look like 'path/to/file.py:function', got 'rewards.py'
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.rewards.base import Example, RewardResult, RewardSource, as_score
from posttrain.rewards.registry import register_reward_source


class RewardFunctionError(ValueError):
    """A user reward function raised or returned something that is not one score per example."""


def load_function(spec: str) -> Callable[..., Any]:
    """Load `path/to/file.py:function` (the path relative to the working directory, or absolute).

    Raises:
        ValueError: If the spec is malformed, the file is missing, or it has no such callable.
    """
    path_text, sep, function_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not function_name.isidentifier():
        raise ValueError(f"python reward source: function must look like 'path/to/file.py:function', got {spec!r}")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"python reward source: file {path_text!r} not found (resolved to {path})")
    module_name = f"posttrain_user_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"python reward source: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # so dataclasses/pickle inside the user's file can find it
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    function = getattr(module, function_name, None)
    if not callable(function):
        available = sorted(name for name, value in vars(module).items() if callable(value) and not name.startswith("_"))
        raise ValueError(
            f"python reward source: {path_text!r} has no function {function_name!r} "
            f"(callables there: {', '.join(available) or 'none'})"
        )
    return function


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@register_reward_source("python")
class PythonFunctionReward(RewardSource):
    """A user-written reward function.

    Args:
        function: `path/to/file.py:function`.
        batched: Call it once per batch with lists instead of once per example.
        fields: Example fields the function reads (checked before each call, with a clear error).
    """

    def __init__(self, *, function: str, batched: bool = False, fields: Sequence[str] = ()) -> None:
        self.function_spec = function
        self.function = load_function(function)
        self.batched = batched
        self.required_fields = tuple(fields)

    def _describe(self, index: int, prompts: list[str], completions: list[str]) -> str:
        return f"example {index} (prompt {_preview(prompts[index])}, completion {_preview(completions[index])})"

    def _to_result(self, value: object, index: int, prompts: list[str], completions: list[str]) -> RewardResult:
        if isinstance(value, RewardResult):
            return value
        number = as_score(value)
        if number is None:
            raise RewardFunctionError(
                f"reward function {self.function_spec!r} returned {value!r} ({type(value).__name__}) for "
                f"{self._describe(index, prompts, completions)}; expected a finite number or a RewardResult"
            )
        return RewardResult(number, "ok", f"{self.function_spec}")

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        if not self.batched:
            values = [self._call_one(i, prompts, completions, examples) for i in range(len(completions))]
        else:
            try:
                values = list(self.function(prompts, completions, [dict(example) for example in examples]))
            except Exception as exc:
                self._find_culprit(exc, prompts, completions, examples)
                raise RewardFunctionError(
                    f"reward function {self.function_spec!r} raised {type(exc).__name__}: {exc} on a batch of "
                    f"{len(completions)} examples"
                ) from exc
            if len(values) != len(completions):
                raise RewardFunctionError(
                    f"reward function {self.function_spec!r} returned {len(values)} scores for a batch of "
                    f"{len(completions)} examples (first: {self._describe(0, prompts, completions)})"
                )
        return [self._to_result(value, i, prompts, completions) for i, value in enumerate(values)]

    def _call_one(self, index: int, prompts: list[str], completions: list[str], examples: Sequence[Example]) -> Any:
        try:
            return self.function(prompts[index], completions[index], dict(examples[index]))
        except Exception as exc:
            raise RewardFunctionError(
                f"reward function {self.function_spec!r} raised {type(exc).__name__}: {exc} on "
                f"{self._describe(index, prompts, completions)}"
            ) from exc

    def _find_culprit(
        self, batch_error: Exception, prompts: list[str], completions: list[str], examples: Sequence[Example]
    ) -> None:
        """Re-run a failed batched call one example at a time; raise naming the first example that fails."""
        for index in range(len(completions)):
            try:
                self.function([prompts[index]], [completions[index]], [dict(examples[index])])
            except Exception as exc:
                raise RewardFunctionError(
                    f"reward function {self.function_spec!r} raised {type(exc).__name__}: {exc} on "
                    f"{self._describe(index, prompts, completions)}"
                ) from batch_error
