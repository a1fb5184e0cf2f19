"""Tools (schemas from type hints, calls that never crash), tool-call formats, the calculator world, the
sandboxed Python tool, and loading environments by name or file."""

from __future__ import annotations

import textwrap

import pytest

from posttrain.envs import StepResult, ToolDefinitionError, call_tool, check_environment, environment_class, tool_schema
from posttrain.envs.calculator import CalculatorEnvironment, calculator
from posttrain.envs.protocol import EpisodeError, ToolEnvironment, check_step
from posttrain.envs.tools import check_tools
from posttrain.envs.python_tool import python
from posttrain.envs.tool_calls import ToolCall, parse_tool_calls


def lookup(city: str, days: int = 1) -> str:
    """Looks up the weather.

    Args:
        city: The city's name.
        days: How many days ahead.
    """
    return f"{city}: sunny for {days} day(s)"


def untyped(city):
    """Looks up the weather.

    Args:
        city: The city's name.
    """
    return city


def test_schema_comes_from_type_hints_and_docstring() -> None:
    assert tool_schema(lookup) == {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks up the weather.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name."},
                    "days": {"type": "integer", "description": "How many days ahead."},
                },
                "required": ["city"],
            },
            "return": {"type": "string"},
        },
    }


def test_a_tool_without_type_hints_is_refused_by_name() -> None:
    with pytest.raises(ToolDefinitionError, match="tool 'untyped'.*missing a type hint"):
        tool_schema(untyped)
    with pytest.raises(ToolDefinitionError, match="tool 'untyped': argument 'city' has no type hint"):
        check_tools([untyped], describe=False)

    def undocumented(city: str) -> str:
        return city

    with pytest.raises(ToolDefinitionError, match="tool 'undocumented' has no docstring"):
        check_tools([undocumented], describe=False)

    def no_args_section(city: str) -> str:
        """Looks up the weather."""
        return city

    check_tools([no_args_section], describe=False)  # what only transformers' schema builder finds:
    with pytest.raises(ToolDefinitionError, match="tool 'no_args_section' cannot be described.*city"):
        check_tools([no_args_section])


@pytest.mark.parametrize(
    "name, arguments, expected",
    [
        ("lookup", {"city": "Oslo"}, "Oslo: sunny for 1 day(s)"),
        ("lookup", {"city": "Oslo", "days": 2}, "Oslo: sunny for 2 day(s)"),
        ("nope", {}, "error: unknown tool 'nope'; tools: lookup"),
        ("lookup", {}, "error: lookup: missing argument(s) `city`"),
        ("lookup", {"town": "Oslo"}, "error: lookup: unknown argument(s) `town`; it takes city, days"),
        ("lookup", {"city": 3}, "error: lookup: argument `city` must be a string, got 3"),
        ("lookup", {"city": "Oslo", "days": True}, "error: lookup: argument `days` must be an integer, got true"),
        ("lookup", ["Oslo"], 'error: lookup: arguments must be an object, got ["Oslo"]'),
    ],
)
def test_tool_calls_never_raise(name, arguments, expected) -> None:
    result = call_tool({"lookup": lookup}, name, arguments)
    assert result.text == expected
    assert result.error == expected.startswith("error:")


def test_a_tool_that_raises_is_an_error_observation() -> None:
    assert call_tool({"calculator": calculator}, "calculator", {"expression": "1 / 0"}).text == (
        "error: calculator: ZeroDivisionError: division by zero"
    )


@pytest.mark.parametrize(
    "message, tool_format, calls",
    [
        ('<tool_call>\n{"name": "lookup", "arguments": {"city": "Oslo"}}\n</tool_call>', "hermes",
         [ToolCall("lookup", {"city": "Oslo"})]),
        ('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call><tool_call>{"name": "b"}</tool_call>',
         "hermes", [ToolCall("a", {"x": 1}), ToolCall("b", {})]),
        ("<tool_call>{not json", "hermes", [ToolCall("", None, "the tool call is not valid JSON: {not json")]),
        ('<tool_call>["lookup"]</tool_call>', "hermes",
         [ToolCall("", None, 'a tool call needs {"name": ..., "arguments": {...}}, got ["lookup"]')]),
        ("The answer is 43.", "hermes", []),
        ("<<calculator: 71 - 28>>", "builtin", [ToolCall("calculator", "71 - 28")]),
        ("<<calculator 71 - 28>>", "builtin",
         [ToolCall("", None, "a tool call is written <<name: argument>>, got <<calculator 71 - 28>>")]),
        ("43", "builtin", []),
    ],
)  # fmt: skip
def test_parse_tool_calls(message, tool_format, calls) -> None:
    assert parse_tool_calls(message, tool_format) == calls


@pytest.mark.parametrize(
    "expression, value",
    [("71 - 28", "43"), ("312 + 47", "359"), ("(2 + 3) * 4", "20"), ("7 / 2", "3.5"), ("-4 + 1", "-3"), ("9 // 2", "4")],
)
def test_calculator(expression, value) -> None:
    assert calculator(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "2 ** 1000", "x + 1", "1 +", "9" * 40 + " * 9"])
def test_calculator_refuses_anything_but_arithmetic(expression) -> None:
    with pytest.raises(ValueError):
        calculator(expression)


def test_calculator_episode() -> None:
    env = CalculatorEnvironment()
    env.reset({"messages": [{"role": "user", "content": "What is 312 + 47?"}], "answer": "359"})
    step = env.step("<<calculator: 312 + 47>>")
    assert (step.messages, step.done, step.tool_calls, step.tool_errors) == ([{"role": "tool", "content": "359"}], False, 1, 0)
    step = env.step("<<calculator: 312 +>>")
    assert step.messages[0]["content"].startswith("error: calculator: ValueError: cannot read")
    assert step.tool_errors == 1 and not step.done
    assert (env.step("359").done, env.step("359").reward, env.step("358").reward) == (True, 1.0, 0.0)
    hermes = CalculatorEnvironment(tool_format="hermes")
    hermes.reset({"messages": [{"role": "user", "content": "?"}], "answer": "4"})
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>'
    assert hermes.step(call).messages == [{"role": "tool", "content": "4"}]


def test_python_tool_runs_in_the_sandbox() -> None:
    assert python("print(6 * 7)") == "42\n"
    assert "ZeroDivisionError" in python("1 / 0")
    # no network inside: the sandbox's hardening, inherited
    assert "error" in python("import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)").lower()
    assert python("import time; time.sleep(30)").startswith("error: timed out")


def test_check_step_refuses_malformed_steps() -> None:
    with pytest.raises(EpisodeError, match="must return a StepResult"):
        check_step(("obs", False, 1.0))
    with pytest.raises(EpisodeError, match="list of"):
        check_step(StepResult([{"role": "tool"}], done=False))
    with pytest.raises(EpisodeError, match="nothing to read"):
        check_step(StepResult([], done=False))
    with pytest.raises(EpisodeError, match="finite number"):
        check_step(StepResult([], done=True, reward=float("nan")))


def test_environments_by_name_and_file(tmp_path) -> None:
    assert environment_class("builtin:calculator") is CalculatorEnvironment
    with pytest.raises(ValueError, match="unknown environment 'builtin:abacus'; built-in environments: builtin:calculator"):
        environment_class("builtin:abacus")
    (tmp_path / "my_env.py").write_text(
        textwrap.dedent(
            '''
            from posttrain.envs import ToolEnvironment

            def shout(text):
                """Shouts.

                Args:
                    text: What to shout.
                """
                return text.upper()

            class Loud(ToolEnvironment):
                tools = (shout,)

            class NotAnEnvironment:
                pass
            '''
        )
    )
    assert issubclass(environment_class("my_env.py:Loud", tmp_path), ToolEnvironment)
    with pytest.raises(ValueError, match="environment 'my_env.py:Loud': tool 'shout': argument 'text' has no type hint"):
        check_environment("my_env.py:Loud", {}, tmp_path)
    with pytest.raises(ValueError, match="not a subclass of posttrain.envs.Environment"):
        environment_class("my_env.py:NotAnEnvironment", tmp_path)
    with pytest.raises(ValueError, match="has no function 'Missing'"):
        environment_class("my_env.py:Missing", tmp_path)
    with pytest.raises(ValueError, match="has no argument\\(s\\) 'colour'; valid arguments: tool_format"):
        check_environment("builtin:calculator", {"colour": "red"})


RECIPE = """
name: tools
model: {{name_or_path: "builtin:micro"}}
stages:
  - name: grpo
    kind: grpo
    data: {{source: "builtin:calculator", count: 16}}
    environment:
      name: {name}
      args: {args}
    reward: [{{source: environment}}]
    train: {{steps: 1}}
"""


@pytest.mark.parametrize(
    "name, args, problem",
    [
        ("builtin:abacus", "{}", "stages[0] (grpo).environment (line 9): unknown environment 'builtin:abacus'; built-in "
         "environments: builtin:calculator"),
        ("my_env.py:Untyped", "{}", "stages[0] (grpo).environment (line 9): environment 'my_env.py:Untyped': tool "
         "'shout': argument 'text' has no type hint"),
        ("builtin:calculator", "{tool_fromat: hermes}", "environment 'builtin:calculator' has no argument(s) "
         "'tool_fromat'; valid arguments: tool_format"),
        ("missing.py:Env", "{}", "environment 'missing.py:Env': file"),
        ("builtin:calculator", "{}\n    dapo: {}", "stages[0] (grpo).environment: multi-turn episodes do not combine with `dapo:` yet"),
    ],
)  # fmt: skip
def test_validate_names_the_bad_environment(tmp_path, name, args, problem) -> None:
    from posttrain.errors import RecipeError
    from posttrain.recipe import load_recipe

    (tmp_path / "my_env.py").write_text(
        "from posttrain.envs import ToolEnvironment\n\n"
        "def shout(text):\n    '''Shouts.\n\n    Args:\n        text: What to shout.\n    '''\n    return text\n\n"
        "class Untyped(ToolEnvironment):\n    tools = (shout,)\n"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(name=name, args=args))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert problem in str(info.value)
    path.write_text(RECIPE.format(name="builtin:calculator", args="{tool_format: builtin}"))
    assert load_recipe(path).recipe.stages[0].environment.max_turns == 4
