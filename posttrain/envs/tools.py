"""Tools: plain typed Python functions an environment lets the model call.

A tool is an ordinary function with type hints and a Google-style docstring (an ``Args:`` section naming
every parameter). Its JSON schema comes from transformers' `get_json_schema` (the convention
`apply_chat_template(..., tools=...)` reads), so the schema a chat template shows the model is the one
transformers would build; writing our own schema builder would only drift from it. A function without type
hints or without a documented argument is refused with an error naming the function (`check_tools`, run
by `posttrain validate`).

Calling a tool never raises into the rollout: an unknown name, arguments that do not fit the schema, or a
tool that raises become an ``"error: ..."`` observation the model reads on its next turn (`call_tool`).

>>> def add(a: int, b: int) -> int:
...     '''Adds two integers.
...
...     Args:
...         a: The first number.
...         b: The second number.
...     '''
...     return a + b
>>> tool_schema(add)["function"]["parameters"]["required"]
['a', 'b']
>>> call_tool({"add": add}, "add", {"a": 2, "b": "3"}).text
'error: add: argument `b` must be an integer, got "3"'
>>> call_tool({"add": add}, "add", {"a": 2, "b": 3}).text
'5'
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Tool = Callable[..., Any]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "an object"}  # fmt: skip


class ToolDefinitionError(ValueError):
    """A tool function cannot be described to the model (no type hints, an undocumented argument...)."""


class ToolInfrastructureError(RuntimeError):
    """A tool could not run for reasons that are not the model's (e.g. the sandbox did not start): the
    episode is excluded from training rather than the model reading an error."""


@functools.lru_cache(maxsize=256)
def _cached_schema(tool: Tool) -> dict[str, Any]:
    from transformers.utils import get_json_schema  # transformers is imported lazily (validate stays fast)

    return get_json_schema(tool)


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The tool's JSON schema in the chat-template convention ``{"type": "function", "function": {...}}``.

    Raises:
        ToolDefinitionError: naming the function, when its hints or docstring do not describe it.
    """
    name = getattr(tool, "__name__", repr(tool))
    if not callable(tool):
        raise ToolDefinitionError(f"tool {name!r} is not a function")
    try:
        return copy.deepcopy(_cached_schema(tool))
    except TypeError:  # an unhashable callable: describe it without the cache
        from transformers.utils import get_json_schema

        return get_json_schema(tool)
    except Exception as error:  # transformers raises TypeHintParsingException / DocstringParsingException
        raise ToolDefinitionError(
            f"tool {name!r} cannot be described to the model: {error} (a tool needs type hints on every argument "
            "and a docstring with a description and an `Args:` entry per argument)"
        ) from None


def check_type_hints(tool: Tool) -> str:
    """The tool's name, after checking without transformers (`posttrain validate` stays fast) that it is a
    function with a docstring and a type hint on every parameter.

    Raises:
        ToolDefinitionError: naming the tool and the parameter.
    """
    name = getattr(tool, "__name__", repr(tool))
    if not callable(tool):
        raise ToolDefinitionError(f"tool {name!r} is not a function")
    for parameter in inspect.signature(tool).parameters.values():
        if parameter.annotation is inspect.Parameter.empty:
            raise ToolDefinitionError(f"tool {name!r}: argument {parameter.name!r} has no type hint")
    if not inspect.getdoc(tool):
        raise ToolDefinitionError(f"tool {name!r} has no docstring to describe it to the model")
    return name


def check_tools(tools: Sequence[Tool], describe: bool = True) -> dict[str, Tool]:
    """The tools by name, each checked by `check_type_hints` and, with ``describe``, by `tool_schema`.

    Raises:
        ToolDefinitionError: for a tool that cannot be described, or two tools with the same name.
    """
    by_name: dict[str, Tool] = {}
    for tool in tools:
        name = check_type_hints(tool)
        if describe:
            name = tool_schema(tool)["function"]["name"]
        if name in by_name:
            raise ToolDefinitionError(f"two tools are named {name!r}")
        by_name[name] = tool
    return by_name


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave the model to read.

    Attributes:
        text: the observation (the tool's return value as text, or ``"error: ..."``).
        error: whether the call failed (unknown tool, bad arguments, the tool raised).
    """

    text: str
    error: bool = False


def _check_arguments(name: str, schema: Mapping[str, Any], arguments: Any) -> str | None:
    """Why ``arguments`` do not fit the tool's parameter schema, or None if they do."""
    if not isinstance(arguments, dict):
        return f"{name}: arguments must be an object, got {json.dumps(arguments)}"
    properties = schema.get("properties", {})
    unknown = [key for key in arguments if key not in properties]
    if unknown:
        return f"{name}: unknown argument(s) {', '.join(f'`{k}`' for k in unknown)}; it takes {', '.join(properties) or 'none'}"
    missing = [key for key in schema.get("required", []) if key not in arguments]
    if missing:
        return f"{name}: missing argument(s) {', '.join(f'`{k}`' for k in missing)}"
    for key, value in arguments.items():
        kind = properties[key].get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        allowed = tuple(t for k in kinds if k in _JSON_TYPES for t in _JSON_TYPES[k])
        # bool is an int in Python, but not an integer in JSON
        wrong_bool = isinstance(value, bool) and "boolean" not in kinds
        if allowed and (not isinstance(value, allowed) or wrong_bool) and not (value is None and "null" in kinds):
            return f"{name}: argument `{key}` must be {_TYPE_WORDS.get(kinds[0], kinds[0])}, got {json.dumps(value)}"
    return None


def call_tool(tools: Mapping[str, Tool], name: str, arguments: Any) -> ToolResult:
    """Runs one tool call; every failure is an ``"error: ..."`` observation, never an exception."""
    tool = tools.get(name)
    if tool is None:
        return ToolResult(f"error: unknown tool {name!r}; tools: {', '.join(sorted(tools)) or 'none'}", error=True)
    problem = _check_arguments(name, tool_schema(tool)["function"]["parameters"], arguments)
    if problem is not None:
        return ToolResult(f"error: {problem}", error=True)
    try:
        value = tool(**arguments)
    except ToolInfrastructureError:
        raise
    except Exception as error:  # the model's call made the tool fail: the model reads why
        return ToolResult(f"error: {name}: {type(error).__name__}: {error}", error=True)
    return ToolResult(value if isinstance(value, str) else json.dumps(value))
