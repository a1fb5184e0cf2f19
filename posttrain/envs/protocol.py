"""The environment protocol: what a multi-turn RL episode asks of an environment.

An episode is one conversation. The rollout (`posttrain.rl.episodes`) makes a fresh environment per
episode and calls:

1. ``reset(example) -> messages``: the conversation the model starts from, given the prompt row's fields
   (``messages``, ``question`` and every other column, e.g. ``answer``).
2. ``step(message) -> StepResult``: the model's assistant message (text) in; the observation messages (tool
   results, usually ``{"role": "tool", ...}``), whether the episode is over, and the environment's reward
   out. Called after every assistant turn until ``done``, the stage's turn limit or its token budget.

The class attribute ``tools`` lists the functions the model may call (`posttrain.envs.tools`); their
schemas reach the model through the chat template (``apply_chat_template(..., tools=...)``).

`ToolEnvironment` implements the common case: every assistant message that holds tool calls gets their
results; the first message without one is the final answer, which ``final_reward`` scores. A minimal
environment of one's own (``recipe.yaml``: ``environment: {name: my_env.py:Guess}``)::

    from posttrain.envs import Environment, StepResult

    class Guess(Environment):
        '''Three tries to name the number; the reward is 1 for a right guess.'''

        def step(self, message: str) -> StepResult:
            right = message.strip() == self.example["answer"]
            return StepResult([{"role": "user", "content": "yes" if right else "no"}], done=right,
                              reward=float(right))

An environment that raises, returns something other than a `StepResult` (with a list of ``role``/``content``
messages), or takes longer than the stage's time budget has its episode excluded from training and counted
(``episodes/failed``), like a reward source's infrastructure error; the run goes on.
"""

from __future__ import annotations

import abc

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from posttrain.envs.tool_calls import ToolFormat, builtin_arguments, parse_tool_calls
from posttrain.envs.tools import Tool, ToolResult, call_tool, check_tools, tool_schema

Message = dict[str, str]


class EpisodeError(RuntimeError):
    """An environment broke its protocol (a malformed step); its episode is excluded."""


@dataclass
class StepResult:
    """What an environment answers to one assistant message.

    Attributes:
        messages: observation messages appended to the conversation (none when ``done``, usually).
        done: the episode is over.
        reward: the environment's reward for the episode so far (the last step's counts; reward sources
            read it as the example field ``environment_reward``).
        tool_calls: tool calls this step ran (for the metrics).
        tool_errors: of which failed (unknown tool, bad arguments, unreadable call, the tool raised).
    """

    messages: list[Message]
    done: bool
    reward: float = 0.0
    tool_calls: int = 0
    tool_errors: int = 0


class Environment(abc.ABC):
    """Base class of environments (see the module docstring); ``step`` is the one method to write.

    Constructor keywords come from the recipe's ``environment.args``. ``self.example`` is the row of the
    current episode after ``reset``.
    """

    tools: ClassVar[Sequence[Tool]] = ()

    def __init__(self) -> None:
        self.example: dict[str, Any] = {}

    def reset(self, example: Mapping[str, Any]) -> list[Message]:
        """The first messages of the episode; by default the prompt row's conversation."""
        self.example = dict(example)
        return [dict(m) for m in example["messages"]]

    @abc.abstractmethod
    def step(self, message: str) -> StepResult:
        """Answers the model's assistant message (see the module docstring)."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The JSON schemas of ``tools`` for the chat template (empty list: no tools)."""
        return [tool_schema(tool) for tool in self.tools]


class ToolEnvironment(Environment):
    """Runs the tool calls of each assistant message; a message without a call is the final answer.

    Args:
        tool_format: how calls are written: ``hermes`` (``<tool_call>{json}</tool_call>``, Qwen/Hermes
            templates) or ``builtin`` (``<<name: argument>>``, the tiny model); see `posttrain.envs.tool_calls`.
    """

    def __init__(self, tool_format: ToolFormat = "hermes") -> None:
        super().__init__()
        self.tool_format = tool_format
        self.by_name = check_tools(self.tools)

    def step(self, message: str) -> StepResult:
        calls = parse_tool_calls(message, self.tool_format)
        if not calls:
            return StepResult([], done=True, reward=self.final_reward(message))
        results = [self.run_call(call.name, call.arguments, call.problem) for call in calls]
        messages = [{"role": "tool", "content": result.text} for result in results]
        return StepResult(messages, done=False, tool_calls=len(calls), tool_errors=sum(r.error for r in results))

    def run_call(self, name: str, arguments: Any, problem: str | None) -> ToolResult:
        """One parsed call's result (an unreadable call is an error observation)."""
        if problem is not None:
            return ToolResult(f"error: {problem}", error=True)
        if self.tool_format == "builtin" and name in self.by_name:
            arguments = builtin_arguments(tool_schema(self.by_name[name]), arguments)
        return call_tool(self.by_name, name, arguments)

    def final_reward(self, message: str) -> float:
        """The reward of the final answer; 0 unless a subclass says otherwise (reward sources may score it)."""
        return 0.0


def check_step(result: Any) -> StepResult:
    """``result`` if it is a well-formed `StepResult`, else `EpisodeError` saying what is wrong."""
    if not isinstance(result, StepResult):
        raise EpisodeError(f"step() must return a StepResult, got {type(result).__name__}")
    if not isinstance(result.messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in result.messages
    ):
        raise EpisodeError(f"step() messages must be a list of {{role, content}} dicts, got {result.messages!r:.200}")
    if not isinstance(result.reward, (int, float)) or result.reward != result.reward:
        raise EpisodeError(f"step() reward must be a finite number, got {result.reward!r}")
    if not result.done and not result.messages:
        raise EpisodeError("step() returned no observation and done=False: the model would have nothing to read")
    return result


def check_reset(messages: Any) -> list[Message]:
    """``messages`` if they are a non-empty list of {role, content} dicts, else `EpisodeError`."""
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise EpisodeError(f"reset() must return a non-empty list of {{role, content}} dicts, got {messages!r:.200}")
    return messages


__all__ = [
    "Environment", "EpisodeError", "Message", "StepResult", "ToolEnvironment", "check_reset", "check_step",
]
