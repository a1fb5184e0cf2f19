"""A posttrain reward source used as a plain TRL reward function, inside TRL's GRPOTrainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from posttrain.rewards import CompositeReward, RewardEntry, RewardResult, RewardSource, as_trl_reward_func
from posttrain.rewards.trl_adapter import message_text


class CountingSource(RewardSource):
    """Scores a completion by its number of words / 10 and records every call."""

    required_fields = ("answer",)

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], list[dict], int]] = []
        self.returned: list[list[float]] = []

    def score(self, prompts, completions, examples, step):
        self.calls.append((prompts, completions, [dict(example) for example in examples], step))
        scores = [len(completion.split()) / 10 for completion in completions]
        self.returned.append(scores)
        return [RewardResult(score, "ok", "words/10") for score in scores]


def test_adapter_maps_trl_columns_to_examples() -> None:
    source = CountingSource()
    func = as_trl_reward_func(source, name="word_count")

    class State:
        global_step = 7

    values = func(
        prompts=["q1", "q2"],
        completions=["a b", "c"],
        completion_ids=[[5, 6], [7]],
        answer=["x", "y"],
        trainer_state=State(),
        log_metric=lambda name, value: None,
    )
    assert func.__name__ == "word_count"
    assert values == [0.2, 0.1]
    prompts, completions, examples, step = source.calls[0]
    assert (prompts, completions, examples, step) == (["q1", "q2"], ["a b", "c"], [{"answer": "x"}, {"answer": "y"}], 7)


def test_adapter_marks_truncation_and_logs_composite_metrics() -> None:
    source = CountingSource()
    # The entry's own source kind is replaced by the pre-built counting source under the same name.
    composite = CompositeReward([RewardEntry(source="format", name="words")], sources={"words": source})
    logged: dict[str, float] = {}
    func = as_trl_reward_func(composite, name="total", eos_token_id=1)
    values = func(
        prompts=["q", "q"],
        completions=["a b c", "a b"],
        completion_ids=[[4, 4, 1], [4, 4]],  # the second has no EOS: truncated
        answer=["x", "x"],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert values == pytest.approx([0.3, 0.0])  # truncated: positive score capped at 0
    assert source.calls[0][2][1]["truncated"] is True
    assert logged["reward/words/mean"] == pytest.approx(0.25)


def test_message_text_handles_chat_messages() -> None:
    assert message_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert message_text("plain") == "plain"


def test_grpo_trainer_logs_our_reward(tiny_causal_lm: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    source = CountingSource()
    reward_func = as_trl_reward_func(source, name="word_count")
    dataset = Dataset.from_dict({"prompt": ["1 + 1 = ?", "2 + 2 = ?"] * 4, "answer": ["2", "4"] * 4})
    config = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_causal_lm),
        processing_class=AutoTokenizer.from_pretrained(tiny_causal_lm),
        reward_funcs=[reward_func],
        args=config,
        train_dataset=dataset,
    )
    trainer.train()

    assert len(source.calls) == 2
    for _, completions, examples, _ in source.calls:
        assert len(completions) == 4 and all(isinstance(text, str) for text in completions)
        assert all(example["answer"] in {"2", "4"} for example in examples)
    logged = [
        entry["rewards/word_count/mean"] for entry in trainer.state.log_history if "rewards/word_count/mean" in entry
    ]
    assert len(logged) == 2
    for value, scores in zip(logged, source.returned):
        assert math.isclose(value, sum(scores) / len(scores), rel_tol=1e-5, abs_tol=1e-6)
