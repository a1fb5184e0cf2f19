"""Environments by name: built-in ones (``builtin:calculator``) and a user's own (``path/to/file.py:Class``,
relative to the recipe's folder).

Built-in environments live in their own modules and are imported on first lookup. `check_environment` is
what `posttrain validate` runs: it loads the class, checks the recipe's ``args`` against its constructor and
that every tool has type hints (an error names the tool), without building an environment.

>>> environment_class("builtin:nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown environment 'builtin:nope'; built-in environments: builtin:calculator (or path/to/file.py:Class)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

_BUILTIN_MODULES = ("posttrain.envs.calculator",)
_REGISTRY: dict[str, type] = {}

EnvT = TypeVar("EnvT", bound=type)


def register_environment(name: str) -> Callable[[EnvT], EnvT]:
    """Class decorator registering a built-in environment under ``name`` (``builtin:...``)."""

    def decorate(cls: EnvT) -> EnvT:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"environment {name!r} is already registered to {existing.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_environments() -> list[str]:
    """The built-in environments' names."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(_REGISTRY)


def environment_class(name: str, recipe_dir: Path | None = None) -> type:
    """The class a recipe names: a built-in name, or ``path/to/file.py:Class`` (relative to ``recipe_dir``).

    Raises:
        ValueError: unknown name, missing file or class, or a class that is not an `Environment`.
    """
    from posttrain.envs.protocol import Environment

    if name.startswith("builtin:") or ".py:" not in name:
        known = available_environments()
        if name not in _REGISTRY:
            raise ValueError(f"unknown environment {name!r}; built-in environments: {', '.join(known)} (or path/to/file.py:Class)")
        return _REGISTRY[name]
    from posttrain.rewards.python_function import load_function  # the loader `source: python` uses

    cls = load_function(name, what=f"environment {name!r}", relative_to=recipe_dir)
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"environment {name!r} is not a subclass of posttrain.envs.Environment")
    return cls


def check_environment(name: str, args: Mapping[str, Any], recipe_dir: Path | None = None, describe: bool = True) -> type:
    """The environment's class after checking ``args`` against its constructor and its tools' type hints;
    with ``describe`` also their JSON schemas (transformers' `get_json_schema`, about a second to import:
    `posttrain validate` leaves it to the stage).

    Raises:
        ValueError: naming the environment, the argument or the tool at fault.
    """
    from posttrain.envs.tools import check_tools

    cls = environment_class(name, recipe_dir)
    parameters = {
        key: p for key, p in inspect.signature(cls.__init__).parameters.items()
        if key != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }  # fmt: skip
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = [key for key in args if key not in parameters and not takes_any]
    if unknown:
        raise ValueError(
            f"environment {name!r} has no argument(s) {', '.join(map(repr, unknown))}; valid arguments: "
            f"{', '.join(parameters) or 'none'}"
        )
    missing = [key for key, p in parameters.items() if p.default is p.empty and key not in args]
    if missing:
        raise ValueError(f"environment {name!r} needs argument(s) {', '.join(map(repr, missing))}")
    try:
        check_tools(cls.tools, describe)
    except ValueError as error:
        raise ValueError(f"environment {name!r}: {error}") from None
    return cls
