"""Built-in reward sources (table-driven) and the registry."""

from __future__ import annotations

import pytest

from posttrain.rewards import (
    MissingFieldError,
    RewardResult,
    RewardSource,
    available_reward_sources,
    build_reward_source,
    register_reward_source,
)
from posttrain.rewards.code_reward import CodeReward, extract_program
from posttrain.verifiers.code_tests import CodeVerifier
from posttrain.verifiers.sandbox import SandboxUnavailable


def scores(source: RewardSource, completions: list[str], examples: list[dict] | None = None) -> list[float]:
    return [result.score for result in source(["prompt"] * len(completions), completions, examples=examples)]


@pytest.mark.parametrize(
    ("args", "completion", "status"),
    [
        ({}, "<think>hmm</think>\n<answer>4</answer>", "ok"),
        ({}, "<answer>4</answer>", "wrong"),
        ({}, "<think>a</think><answer>4</answer> trailing", "wrong"),
        ({"pattern": r"\\boxed\{.+\}", "mode": "search"}, "thus \\boxed{4}.", "ok"),
        ({"pattern": r"\\boxed\{.+\}", "mode": "search"}, "thus 4.", "wrong"),
        ({"pattern": r"\d+", "mode": "fullmatch", "score": 0.5}, " 42 ", "ok"),
    ],
)
def test_format(args: dict, completion: str, status: str) -> None:
    [result] = build_reward_source("format", **args)(["q"], [completion])
    assert result.status == status
    assert result.score == (args.get("score", 1.0) if status == "ok" else 0.0)


@pytest.mark.parametrize(
    ("args", "completion", "score"),
    [
        ({"target_length": 10, "max_length": 20}, "x" * 10, 0.0),
        ({"target_length": 10, "max_length": 20}, "x" * 15, -0.5),
        ({"target_length": 10, "max_length": 20}, "x" * 99, -1.0),
        ({"target_length": 2, "max_length": 6, "unit": "words"}, "a b c d", -0.5),
    ],
)
def test_length_penalty(args: dict, completion: str, score: float) -> None:
    assert scores(build_reward_source("length_penalty", **args), [completion]) == [score]


@pytest.mark.parametrize(
    ("args", "completion", "score"),
    [
        ({"ngram_size": 2}, "the cat sat on the mat", 0.0),
        ({"ngram_size": 2}, "go go go go go", -0.75),  # 4 bigrams, 1 distinct
        ({"ngram_size": 3, "max_penalty": -2.0}, "a b c a b c", -0.5),  # 4 trigrams, 3 distinct
        ({"ngram_size": 5}, "too short", 0.0),
        ({"ngram_size": 2, "unit": "chars"}, "abab", -1 / 3),
    ],
)
def test_repetition_penalty(args: dict, completion: str, score: float) -> None:
    assert scores(build_reward_source("repetition_penalty", **args), [completion]) == [pytest.approx(score)]


def test_math_source_reads_the_answer_field() -> None:
    source = build_reward_source("math", answer_field="solution")
    examples = [{"solution": "#### 12"}, {"solution": "12"}, {"solution": "\\frac{1}{"}]
    results = source(["q"] * 3, ["\\boxed{12}", "The answer is 13.", "\\boxed{1}"], examples=examples)
    assert [r.status for r in results] == ["ok", "wrong", "error"]


def test_missing_field_names_source_and_field() -> None:
    source = build_reward_source("math")
    source.name = "correctness"
    with pytest.raises(MissingFieldError, match="'correctness' needs the field 'answer'.*example 1"):
        source(["q", "q"], ["1", "2"], examples=[{"answer": "1"}, {"gold": "2"}])


def test_code_source_requires_opt_in() -> None:
    with pytest.raises(ValueError, match="allow_code_execution: true"):
        build_reward_source("code")


def test_code_source_scores_fenced_programs() -> None:
    source = build_reward_source("code", allow_code_execution=True, timeout_s=3.0)
    tests = "def check(candidate):\n    assert candidate(3) == 9\n"
    completions = ["```python\ndef square(x):\n    return x * x\n```", "def square(x):\n    return x + x\n"]
    results = source(["q", "q"], completions, examples=[{"tests": tests, "entry_point": "square"}] * 2)
    assert [r.score for r in results] == [1.0, 0.0]


def test_code_source_raises_when_the_sandbox_is_unavailable() -> None:
    source = CodeReward(allow_code_execution=True)
    source.verifier = CodeVerifier(bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable):
        source(["q"], ["def f():\n    return 1"], examples=[{"tests": "assert f() == 1", "entry_point": "f"}])


def test_extract_program() -> None:
    assert extract_program("no fences") == "no fences"
    assert extract_program("```\nA\n```\nthen\n```py\nB\n```") == "B\n"


def test_registry_lists_builtins_and_rejects_unknown_names() -> None:
    assert {"math", "code", "format", "length_penalty", "repetition_penalty", "reward_model", "python"} <= set(
        available_reward_sources()
    )
    with pytest.raises(ValueError, match="unknown reward source 'judge'; valid sources: ai_judge, code, environment, format"):
        build_reward_source("judge")
    with pytest.raises(ValueError, match="has no argument.*'weight'"):
        build_reward_source("format", weight=2)


def test_registry_is_open_to_new_kinds() -> None:
    @register_reward_source("test_constant_judge")
    class ConstantJudge(RewardSource):
        def __init__(self, *, value: float = 0.5) -> None:
            self.value = value

        def score(self, prompts, completions, examples, step):
            return [RewardResult(self.value, "ok", "constant") for _ in completions]

    assert "test_constant_judge" in available_reward_sources()
    assert scores(build_reward_source("test_constant_judge", value=0.25), ["a"]) == [0.25]
    with pytest.raises(ValueError, match="already registered"):

        @register_reward_source("math")
        class Impostor(RewardSource):
            def score(self, prompts, completions, examples, step):
                return []


def test_source_output_is_validated() -> None:
    class Broken(RewardSource):
        def score(self, prompts, completions, examples, step):
            return [0.5]

    with pytest.raises(TypeError, match="RewardResult"):
        Broken()(["q"], ["a"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        Broken()(["q", "r"], ["a"])
