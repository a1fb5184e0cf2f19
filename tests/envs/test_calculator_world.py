"""The calculator world's rows: SFT demonstrations (loss on the two assistant turns, not on the tool's
answer) and RL prompts of the same problems."""

from __future__ import annotations

import pytest

from posttrain.data.calculator_world import calculator_rows
from posttrain.data.packing import encode_chats


def test_demonstrations_and_prompts_are_the_same_problems() -> None:
    demonstrations = calculator_rows("train", 20, seed=0)
    prompts = calculator_rows("train", 20, seed=0, demonstrations=False)
    assert {row["level"] for row in demonstrations} == {4, 5}
    for demonstration, prompt in zip(demonstrations, prompts):
        user, call, tool, answer = demonstration["messages"]
        assert user == {"role": "user", "content": prompt["question"]}
        assert call["content"].startswith("<<calculator: ") and tool["content"] == answer["content"] == prompt["answer"]
    first = calculator_rows("test", 3, seed=0, levels=(4,))[0]
    problem = first["messages"][1]["content"][len("<<calculator: ") : -2]
    a, op, b = problem.split()
    assert op == "-" and int(a) - int(b) == int(first["answer"])


def test_sft_trains_on_the_assistant_turns_only(micro) -> None:
    _, tokenizer = micro
    row = {"messages": [
        {"role": "user", "content": "What is 71 - 28?"}, {"role": "assistant", "content": "<<calculator: 71 - 28>>"},
        {"role": "tool", "content": "43"}, {"role": "assistant", "content": "43"},
    ]}  # fmt: skip
    [encoded] = encode_chats(tokenizer, [row])
    trained = tokenizer.decode([t for t, m in zip(encoded.input_ids, encoded.loss_mask) if m])
    assert trained == "<<calculator: 71 - 28>><|end|>43<|end|>"


def test_tool_share_makes_a_weak_teacher_who_estimates_the_other_problems() -> None:
    every = calculator_rows("train", 2000, seed=0)
    assert every == calculator_rows("train", 2000, seed=0, tool_share=1.0)  # the default is unchanged
    weak = calculator_rows("train", 2000, seed=0, tool_share=0.3)
    called = [len(row["messages"]) == 4 for row in weak]
    assert 0.27 < sum(called) / len(weak) < 0.33  # 2,000 draws: 3 standard errors of a 0.3 share is 0.031
    for with_tool, row, tool_row in zip(called, weak, every):
        assert row["answer"] == tool_row["answer"] and row["messages"][0] == tool_row["messages"][0]
        if with_tool:
            assert row["messages"] == tool_row["messages"]
        else:
            a, op, b = tool_row["messages"][1]["content"][len("<<calculator: ") : -2].split()
            rounded_a, rounded_b = (10 * round(int(n) / 10 + 1e-9) for n in (a, b))  # halves up, as the teacher
            shown = rounded_a + rounded_b if op == "+" else rounded_a - rounded_b
            assert row["messages"][1:] == [{"role": "assistant", "content": str(shown)}]
    assert sum(not c and row["messages"][1]["content"] == row["answer"] for c, row in zip(called, weak)) < 0.15 * len(weak)
    with pytest.raises(ValueError, match="tool_share"):
        calculator_rows("train", 5, seed=0, tool_share=0.0)


def test_doctests() -> None:
    import doctest

    import posttrain.data.calculator_world
    import posttrain.envs.calculator

    for module in (posttrain.data.calculator_world, posttrain.envs.calculator):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_benchmark_sorts_episodes_by_what_went_wrong() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "calculator_episodes.py"
    spec = importlib.util.spec_from_file_location("calculator_episodes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    question = "Dan has 85 apples and gives away 44. How many now?"

    def episode(*replies: str) -> list[dict]:
        messages = [{"role": "user", "content": question}]
        for reply in replies:
            role = "tool" if reply.startswith("tool:") else "assistant"
            messages.append({"role": role, "content": reply.removeprefix("tool:")})
        return messages

    cases = {
        ("<<calculator: 85 - 44>>", "tool:41", "41"): "call, right",
        ("<<calculator: 85 - 45>>", "tool:40", "40"): "call miscopied",
        ("<<calculator: 85 + 44>>", "tool:129", "129"): "call miscopied",
        ("<<calculator: 85 - 44>>", "tool:41", "42"): "result miscopied",
        ("41",): "direct, right",
        ("40",): "direct, wrong",
        ("<<calculator: 85 - 44>>", "tool:41", "<<calculator: 41 - 0>>", "tool:41", "41"): "other",
    }
    for replies, kind in cases.items():
        assert module.classify(episode(*replies), question, "41", 4, False) == kind, replies
    assert module.classify(episode("41"), question, "41", 4, True) == "other"
    import doctest

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
