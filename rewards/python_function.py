"""The "python" reward source: the user's own function, given in the recipe as `path/to/file.py:function`.

The file is loaded with importlib from its path (it need not be on `sys.path` or in a package). The
function is called either per example, ``function(prompt, completion, example) -> score`` (default), or,
with `batched: true`, once per batch, ``function(prompts, completions, examples) -> list of scores``.
A score is a real number (bools count) or a `RewardResult`.

Its output is checked on every batch: an exception (SystemExit and KeyboardInterrupt included: a reward
function never ends the run with status 0), a call that does not return within `timeout_s`, a wrong number
of scores, a score of the wrong type, NaN/inf (also inside a `RewardResult`) or an integer too large for a
float raises `RewardFunctionError` naming the function and the offending example — at the first batch,
before a run trains on garbage. When a batched function raises, it is called again one example at a time
to name the example that triggers the error. Each call gets a deep copy of its examples, so a function
that mutates one cannot change the data of later calls. The call runs in a daemon thread so that the
timeout can fire; a function past its timeout cannot be killed, it is abandoned and the run stops.

>>> load_function("rewards.py")
Traceback (most recent call last):
...
ValueError: python reward source: function must look like 'path/to/file.py:function', got 'rewards.py'
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.rewards.base import Example, RewardResult, RewardSource, as_score
from posttrain.rewards.registry import register_reward_source


class RewardFunctionError(ValueError):
    """A user reward function raised or returned something that is not one score per example."""


def load_function(spec: str, what: str = "python reward source", relative_to: Path | None = None) -> Callable[..., Any]:
    """Load `path/to/file.py:function` (the path relative to ``relative_to``, else to the working directory,
    unless absolute): the one loader of every plug-in a recipe names by file (reward functions, objectives,
    environments, curation functions). ``what`` starts each error message and names the plug-in.

    Raises:
        ValueError: If the spec is malformed, the file is missing, or it has no such callable.
    """
    path_text, sep, function_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not function_name.isidentifier():
        raise ValueError(f"{what}: function must look like 'path/to/file.py:function', got {spec!r}")
    if relative_to is not None and not Path(path_text).expanduser().is_absolute():
        path_text = str(Path(relative_to) / path_text)
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"{what}: file {path_text!r} not found (resolved to {path})")
    module_name = f"posttrain_user_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"{what}: cannot import {path}")
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
            f"{what}: {path_text!r} has no function {function_name!r} "
            f"(callables there: {', '.join(available) or 'none'})"
        )
    return function


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def call_with_timeout(function: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Any:
    """`function(*args)` in a daemon thread; raises TimeoutError past `timeout_s`, re-raises what it raised.
    (Also the time budget of environment steps, `posttrain.rl.episodes`.)"""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # SystemExit / KeyboardInterrupt too: reported, never ends the run
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="posttrain-reward-function", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"did not return within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@register_reward_source("python")
class PythonFunctionReward(RewardSource):
    """A user-written reward function.

    Args:
        function: `path/to/file.py:function`.
        batched: Call it once per batch with lists instead of once per example.
        fields: Example fields the function reads (checked before each call, with a clear error).
        timeout_s: Wall-clock limit of one call (per example, or per batch when batched).
    """

    def __init__(
        self, *, function: str, batched: bool = False, fields: Sequence[str] = (), timeout_s: float = 60.0
    ) -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"python reward source: timeout_s must be a finite number > 0, got {timeout_s!r}")
        self.function_spec = function
        self.function = load_function(function)
        self.batched = batched
        self.required_fields = tuple(fields)
        self.timeout_s = float(timeout_s)

    def _describe(self, index: int, prompts: list[str], completions: list[str]) -> str:
        return f"example {index} (prompt {_preview(prompts[index])}, completion {_preview(completions[index])})"

    def _to_result(self, value: object, index: int, prompts: list[str], completions: list[str]) -> RewardResult:
        where = f"reward function {self.function_spec!r} returned"
        if isinstance(value, RewardResult):
            if not math.isfinite(value.score):
                raise RewardFunctionError(
                    f"{where} a RewardResult with score {value.score} for {self._describe(index, prompts, completions)}; "
                    "the score must be finite"
                )
            return value
        try:
            number = as_score(value)
        except OverflowError as exc:
            raise RewardFunctionError(
                f"{where} a number too large for a float (OverflowError: {exc}) for "
                f"{self._describe(index, prompts, completions)}"
            ) from exc
        if number is None:
            raise RewardFunctionError(
                f"{where} {_short_repr(value)} ({type(value).__name__}) for "
                f"{self._describe(index, prompts, completions)}; expected a finite number or a RewardResult"
            )
        return RewardResult(number, "ok", f"{self.function_spec}")

    def _call(self, args: tuple[Any, ...], what: str) -> Any:
        """Call the function on deep copies of `args`; any failure becomes a RewardFunctionError naming `what`."""
        try:
            return call_with_timeout(self.function, copy.deepcopy(args), self.timeout_s)
        except BaseException as exc:
            raise RewardFunctionError(
                f"reward function {self.function_spec!r} raised {type(exc).__name__}: {exc} on {what}"
            ) from exc

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        if not self.batched:
            values = [
                self._call((prompts[i], completions[i], dict(examples[i])), self._describe(i, prompts, completions))
                for i in range(len(completions))
            ]
        else:
            try:
                values = list(self._call((prompts, completions, [dict(e) for e in examples]), "a batch"))
            except RewardFunctionError as exc:
                if not isinstance(exc.__cause__, TimeoutError):  # re-running a slow batch per example: slower still
                    self._find_culprit(exc, prompts, completions, examples)
                raise RewardFunctionError(f"{exc} of {len(completions)} examples") from exc.__cause__
            if len(values) != len(completions):
                raise RewardFunctionError(
                    f"reward function {self.function_spec!r} returned {len(values)} scores for a batch of "
                    f"{len(completions)} examples (first: {self._describe(0, prompts, completions)})"
                )
        return [self._to_result(value, i, prompts, completions) for i, value in enumerate(values)]

    def _find_culprit(
        self, batch_error: Exception, prompts: list[str], completions: list[str], examples: Sequence[Example]
    ) -> None:
        """Re-run a failed batched call one example at a time; raise naming the first example that fails."""
        for index in range(len(completions)):
            try:
                self._call(([prompts[index]], [completions[index]], [dict(examples[index])]), "")
            except RewardFunctionError as exc:
                raise RewardFunctionError(
                    f"{exc}{self._describe(index, prompts, completions)}"
                ) from batch_error


def _short_repr(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # e.g. an int past Python's digit limit
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
