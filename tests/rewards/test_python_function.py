"""The "python" reward source: a user's function from `path/to/file.py:function`, with checked output."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from posttrain.rewards import CompositeReward, RewardResult, build_reward_source
from posttrain.rewards.python_function import RewardFunctionError

USER_FILE = """
from posttrain.rewards import RewardResult

def contains_answer(prompt, completion, example):
    return float(example["answer"] in completion)

def explained(prompt, completion, example):
    return RewardResult(1.0, "ok", "explained") if "because" in completion else RewardResult(0.0, "wrong", "terse")

def fragile(prompt, completion, example):
    if completion == "boom":
        raise KeyError("gold")
    return 1.0

def returns_text(prompt, completion, example):
    return "high" if completion == "b" else 1.0

def returns_nan(prompt, completion, example):
    return float("nan")

def sleeps(prompt, completion, example):
    import time
    time.sleep(30)

def result_nan(prompt, completion, example):
    return RewardResult(float("nan"), "ok", "nan inside")

def huge(prompt, completion, example):
    return 10**400

def mutates(prompt, completion, example):
    example["answer"].append(completion)
    return float(len(example["answer"]))

def exits(prompt, completion, example):
    raise SystemExit(0)

def interrupts(prompt, completion, example):
    raise KeyboardInterrupt

def batch_sleeps(prompts, completions, examples):
    import time
    time.sleep(30)

def batch_lengths(prompts, completions, examples):
    return [len(c) for c in completions]

def batch_too_short(prompts, completions, examples):
    return [1.0] * (len(completions) - 1)

def batch_fragile(prompts, completions, examples):
    return [1 / len(c) for c in completions]
"""


@pytest.fixture
def user_file(tmp_path: Path) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return str(path)


def run(spec: str, completions: list[str], **args):
    source = build_reward_source("python", function=spec, **args)
    return source(["p"] * len(completions), completions, examples=[{"answer": "4"}] * len(completions))


@pytest.mark.parametrize(
    ("function", "args", "completions", "expected"),
    [
        ("contains_answer", {}, ["it is 4", "it is 5"], [(1.0, "ok"), (0.0, "ok")]),
        ("explained", {}, ["4 because", "4"], [(1.0, "ok"), (0.0, "wrong")]),
        ("batch_lengths", {"batched": True}, ["ab", "abcd"], [(2.0, "ok"), (4.0, "ok")]),
    ],
)
def test_user_functions(user_file: str, function: str, args: dict, completions: list[str], expected: list) -> None:
    results = run(f"{user_file}:{function}", completions, **args)
    assert [(r.score, r.status) for r in results] == expected


@pytest.mark.parametrize(
    ("function", "args", "completions", "message"),
    [
        (
            "fragile",
            {},
            ["fine", "boom"],
            r"'.*:fragile' raised KeyError: 'gold' on example 1 \(prompt 'p', completion 'boom'\)",
        ),
        ("returns_text", {}, ["a", "b"], r"returned 'high' \(str\) for example 1"),
        ("returns_nan", {}, ["a"], r"returned nan \(float\) for example 0"),
        ("batch_too_short", {"batched": True}, ["a", "b", "c"], r"returned 2 scores for a batch of 3 examples"),
        (
            "batch_fragile",
            {"batched": True},
            ["a", "", "c"],
            r"raised ZeroDivisionError: division by zero on example 1",
        ),
    ],
)
def test_bad_output_is_an_error_naming_function_and_example(
    user_file: str, function: str, args: dict, completions: list[str], message: str
) -> None:
    with pytest.raises(RewardFunctionError, match=message):
        run(f"{user_file}:{function}", completions, **args)


def test_error_surfaces_at_the_first_batch_through_the_mixer(user_file: str) -> None:
    composite = CompositeReward([{"source": "python", "args": {"function": f"{user_file}:fragile"}}])
    with pytest.raises(RewardFunctionError, match="example 0"):
        composite(["p"], ["boom"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_rewards.py", "must look like"),
        ("missing.py:f", "not found"),
        ("{user_file}:nope", "no function 'nope'.*contains_answer"),
    ],
)
def test_bad_specs(user_file: str, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_reward_source("python", function=spec.format(user_file=user_file))


def test_declared_fields_are_checked(user_file: str) -> None:
    source = build_reward_source("python", function=f"{user_file}:contains_answer", fields=["answer"])
    with pytest.raises(ValueError, match="needs the field 'answer'"):
        source(["p"], ["4"], examples=[{}])
    assert isinstance(source(["p"], ["4"], examples=[{"answer": "4"}])[0], RewardResult)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("function", "args", "message"),
    [
        ("sleeps", {"timeout_s": 0.3}, r"raised TimeoutError: did not return within 0.3 s on example 0"),
        ("batch_sleeps", {"timeout_s": 0.3, "batched": True}, r"raised TimeoutError: did not return within 0.3 s"),
        ("result_nan", {}, r"returned a RewardResult with score nan for example 0 .*must be finite"),
        ("huge", {}, r"returned a number too large for a float \(OverflowError.*for example 0"),
        ("exits", {}, r"'.*:exits' raised SystemExit: 0 on example 0 \(prompt 'p', completion 'a'\)"),
        ("interrupts", {}, r"raised KeyboardInterrupt.* on example 0"),
    ],
)
def test_hangs_nan_overflow_and_exits_are_named_errors(user_file: str, function: str, args: dict, message: str) -> None:
    begin = time.monotonic()
    with pytest.raises(RewardFunctionError, match=message):
        run(f"{user_file}:{function}", ["a", "b"], **args)
    assert time.monotonic() - begin < 5.0


def test_each_call_gets_a_deep_copy_of_its_example(user_file: str) -> None:
    source = build_reward_source("python", function=f"{user_file}:mutates")
    example = {"answer": ["4"]}
    results = source(["p", "p"], ["a", "b"], examples=[example, example])
    assert [result.score for result in results] == [2.0, 2.0]
    assert example == {"answer": ["4"]}


def test_timeout_must_be_positive_and_finite(user_file: str) -> None:
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout_s must be a finite number > 0"):
            build_reward_source("python", function=f"{user_file}:contains_answer", timeout_s=bad)
