"""Registry of reward-source kinds: `@register_reward_source("math")`, `build_reward_source("math", ...)`.

Built-in kinds live in their own modules and are imported on first lookup (not when `posttrain.rewards` is
imported), so the recipe schema loads fast. Another module — e.g. an AI-judge source — registers itself
with the decorator and is added to `_BUILTIN_MODULES` to be found by name from a recipe.

>>> "math" in available_reward_sources()
True
>>> build_reward_source("no_such_source")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown reward source 'no_such_source'; valid sources: ai_judge, code, environment, format, length_penalty, ...
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from posttrain.rewards.base import RewardSource

SourceT = TypeVar("SourceT", bound=type[RewardSource])

_BUILTIN_MODULES = (
    "posttrain.rewards.math_reward",
    "posttrain.rewards.code_reward",
    "posttrain.rewards.format_reward",
    "posttrain.rewards.length_penalty",
    "posttrain.rewards.repetition_penalty",
    "posttrain.rewards.reward_model",
    "posttrain.rewards.python_function",
    "posttrain.rewards.ai_judge",
    "posttrain.rewards.environment_reward",
)
_REGISTRY: dict[str, type[RewardSource]] = {}
_LOAD_LOCK = threading.Lock()
_loaded = False


def register_reward_source(kind: str) -> Callable[[SourceT], SourceT]:
    """Class decorator registering a `RewardSource` subclass under `kind`.

    Raises:
        ValueError: If another class is already registered under `kind`.
    """

    def decorator(cls: SourceT) -> SourceT:
        if not (isinstance(cls, type) and issubclass(cls, RewardSource)):
            raise TypeError(f"@register_reward_source({kind!r}) must decorate a RewardSource subclass, got {cls!r}")
        existing = _REGISTRY.get(kind)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"reward source {kind!r} is already registered to {existing.__qualname__}")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorator


def _load_builtins() -> None:
    global _loaded
    with _LOAD_LOCK:
        if not _loaded:
            for module in _BUILTIN_MODULES:
                importlib.import_module(module)
            _loaded = True


def available_reward_sources() -> list[str]:
    """Sorted names of every registered reward-source kind."""
    _load_builtins()
    return sorted(_REGISTRY)


def reward_source_class(kind: str) -> type[RewardSource]:
    """The class registered under `kind`; ValueError listing the valid names if none is."""
    _load_builtins()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown reward source {kind!r}; valid sources: {', '.join(sorted(_REGISTRY))}") from None


def check_reward_source_args(kind: str, args: Mapping[str, Any]) -> None:
    """Check argument names (not values) against the source's constructor, without building it.

    Raises:
        ValueError: For an unknown kind, an unknown argument or a missing required one, naming the valid ones.
    """
    cls = reward_source_class(kind)
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }
    valid = ", ".join(parameters) or "none"
    unknown = [name for name in args if name not in parameters]
    if unknown:
        raise ValueError(
            f"reward source {kind!r} has no argument(s) {', '.join(map(repr, unknown))}; valid arguments: {valid}"
        )
    missing = [
        name for name, parameter in parameters.items() if parameter.default is parameter.empty and name not in args
    ]
    if missing:
        raise ValueError(
            f"reward source {kind!r} needs argument(s) {', '.join(map(repr, missing))} (valid arguments: {valid})"
        )


def build_reward_source(kind: str, /, **args: Any) -> RewardSource:
    """Build the reward source registered under `kind` with its keyword arguments.

    Raises:
        ValueError: Unknown kind or argument names (the message lists the valid ones), or bad values.
    """
    check_reward_source_args(kind, args)
    return reward_source_class(kind)(**args)
