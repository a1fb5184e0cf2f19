"""Dry-run estimates of steps and tokens per stage kind (the reuse column is tested through the CLI)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from posttrain.config.common import DataSpec, TrainSpec
from posttrain.config.dpo import DPOConfig
from posttrain.config.sft import SFTConfig
from posttrain.plan import estimate, example_count


def test_steps_based_stage_counts_positions_per_process() -> None:
    stage = SFTConfig(name="sft", kind="sft", data=DataSpec(source="builtin:arithmetic"),
                      train=TrainSpec(steps=10, batch_size=4, grad_accum=2, seq_len=64))
    assert estimate(stage, Path("."), world_size=1) == ("10", "5,120")
    assert estimate(stage, Path("."), world_size=2) == ("10", "10,240")


def test_pair_stages_count_two_sequences_per_pair() -> None:
    stage = DPOConfig(name="dpo", kind="dpo", data=DataSpec(source="builtin:preferences"),
                      train=TrainSpec(steps=3, batch_size=8, seq_len=32))
    assert estimate(stage, Path("."), world_size=1) == ("3", "1,536")


def test_epochs_are_estimated_from_the_data_size(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' * 100 + "\n")
    assert example_count(DataSpec(source=str(data)), tmp_path) == 100
    assert example_count(DataSpec(source=str(data), count=30), tmp_path) == 30
    assert example_count(DataSpec(source="builtin:arithmetic"), tmp_path) == 2000
    stage = SFTConfig(name="sft", kind="sft", data=DataSpec(source=str(data)),
                      train=TrainSpec(epochs=2, batch_size=16, seq_len=10))
    assert estimate(stage, tmp_path, world_size=1) == ("~13", "~2,080")  # ceil(200 / 16) steps


def test_rl_stages_give_steps_and_the_most_generated_tokens() -> None:
    grpo = SimpleNamespace(kind="grpo", train=SimpleNamespace(steps=8, prompts_per_step=4), group_size=4,
                           generation=SimpleNamespace(max_new_tokens=6))
    assert estimate(grpo, Path("."), world_size=2) == ("8", "<=1,536 generated")
    unknown = SimpleNamespace(kind="custom", train=None)
    assert estimate(unknown, Path("."), world_size=1) == ("?", "?")
