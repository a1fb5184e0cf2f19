"""Finding tool calls in an assistant message, in the format the model was taught.

Two formats:

- ``hermes``: ``<tool_call>{"name": "calculator", "arguments": {"expression": "71 - 28"}}</tool_call>``, the
  format of the Hermes/Qwen2/Qwen2.5/Qwen3 chat templates (their system prompt shows it with the tools'
  schemas). Several calls in one message are allowed.
- ``builtin``: ``<<calculator: 71 - 28>>``, for the built-in tiny model, which cannot afford a JSON wrapper:
  the text after the colon is the value of the tool's first parameter (its only required one). The shape is
  that of GSM8K's calculator annotations (``<<48/2=24>>``, Cobbe et al., arXiv 2110.14168 §2).

A call that cannot be read (broken JSON, no name) is returned as a `ToolCall` with ``problem`` set: the
environment answers it with an ``"error: ..."`` observation rather than failing the episode.

>>> parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', "hermes")
[ToolCall(name='f', arguments={'x': 1}, problem=None)]
>>> parse_tool_calls("<<calculator: 71 - 28>>", "builtin")
[ToolCall(name='calculator', arguments='71 - 28', problem=None)]
>>> parse_tool_calls("<tool_call>{oops</tool_call>", "hermes")[0].problem
'the tool call is not valid JSON: {oops'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

ToolFormat = Literal["hermes", "builtin"]
TOOL_FORMATS: tuple[str, ...] = ("hermes", "builtin")

_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_BUILTIN = re.compile(r"<<\s*([A-Za-z_][A-Za-z0-9_]*)\s*:(.*?)>>", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One call the model wrote.

    Attributes:
        name: the tool's name ("" when unreadable).
        arguments: a dict of arguments (hermes), or the raw text of the single argument (builtin).
        problem: why the call could not be read, or None.
    """

    name: str
    arguments: Any
    problem: str | None = None


def _hermes_call(body: str) -> ToolCall:
    text = body.strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return ToolCall("", None, f"the tool call is not valid JSON: {text[:200]}")
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return ToolCall("", None, f'a tool call needs {{"name": ..., "arguments": {{...}}}}, got {text[:200]}')
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(payload["name"], None, f"the arguments are not a JSON object: {arguments[:200]}")
    return ToolCall(payload["name"], arguments)


def parse_tool_calls(message: str, tool_format: ToolFormat) -> list[ToolCall]:
    """Every tool call in ``message`` (empty when the message is a final answer)."""
    if tool_format == "hermes":
        return [_hermes_call(body) for body in _HERMES.findall(message)]
    if tool_format == "builtin":
        calls = [ToolCall(name, text.strip()) for name, text in _BUILTIN.findall(message)]
        if not calls and "<<" in message:
            return [ToolCall("", None, f"a tool call is written <<name: argument>>, got {message.strip()[:200]}")]
        return calls
    raise ValueError(f"unknown tool-call format {tool_format!r}; formats: {', '.join(TOOL_FORMATS)}")


def builtin_arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """The arguments of a ``builtin``-format call: its text as the tool's first parameter."""
    names = list(schema["function"]["parameters"].get("properties", {}))
    return {names[0]: text} if names else {}


def format_builtin_call(name: str, argument: str) -> str:
    """A ``builtin``-format call as the model writes it (for demonstrations).

    >>> format_builtin_call("calculator", "2 + 3")
    '<<calculator: 2 + 3>>'
    """
    return f"<<{name}: {argument}>>"
