"""The calculator world's rows: SFT demonstrations (loss on the two assistant turns, not on the tool's
answer) and RL prompts of the same problems."""

from __future__ import annotations

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
