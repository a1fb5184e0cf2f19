"""RL recipe sections and prompt data: what validates, what is refused with which message, which rows load."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from posttrain.algorithms import AGGREGATION_MODES, KL_ESTIMATORS
from posttrain.config.common import DataSpec
from posttrain.config.grpo import GRPOConfig
from posttrain.config.ppo import PPOConfig
from posttrain.config.rl import KLEstimator, LossAggregation
from posttrain.errors import CheckpointError, DataError
from posttrain.rewards import RewardEntry
from posttrain.rl.prompts import load_prompts
from posttrain.rl.reward import resolve_entry_args
from tests.rl.conftest import rl_config


def test_schema_names_match_the_algorithms() -> None:
    assert set(typing.get_args(LossAggregation)) == set(AGGREGATION_MODES)
    assert set(typing.get_args(KLEstimator)) == set(KL_ESTIMATORS)


def test_defaults_per_algorithm() -> None:
    grpo, ppo = rl_config("grpo"), rl_config("ppo")
    assert isinstance(grpo, GRPOConfig) and grpo.kl.coef == 0.0 and grpo.kl.estimator == "k3"
    assert isinstance(ppo, PPOConfig) and ppo.kl.coef == 0.05 and ppo.kl.estimator == "k1" and ppo.group_size == 1


@pytest.mark.parametrize(
    "kind, fields, message",
    [
        ("grpo", {"group_size": 1}, "group_size"),
        ("grpo", {"reward": []}, "at least one reward entry"),
        ("grpo", {"reward": [{"source": "nope"}]}, "unknown reward source 'nope'"),
        ("grpo", {"reward": [{"source": "math", "args": {"answer_feld": "x"}}]}, "no argument"),
        ("grpo", {"kl": {"coef": 0.1, "estimator": "k3", "controller": "adaptive", "target": 1.0}}, "adaptive` is for PPO"),
        ("ppo", {"kl": {"coef": 0.1, "estimator": "k1", "controller": "adaptive"}}, "needs a `target`"),
        ("ppo", {"dual_clip": 1.0}, "dual_clip"),
        ("grpo", {"advantage": "gae"}, "advantage"),
        ("grpo", {"loss_aggregation": "sum"}, "loss_aggregation"),
        ("ppo", {"clip": 0.2}, "Extra inputs"),
    ],
)
def test_invalid_settings_are_refused(kind: str, fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rl_config(kind, **fields)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_prompt_rows_in_every_layout(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [
        {"question": "What is 2 + 3?", "answer": "5"},
        {"prompt": "Write f.", "tests": "def check(c): pass", "entry_point": "f"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
        {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}], "answer": "2"},
    ])
    rows = load_prompts(DataSpec(source="p.jsonl"), tmp_path, seed=0).rows
    assert [row.question for row in rows] == ["What is 2 + 3?", "Write f.", "Hi?", "What is 1 + 1?"]
    assert rows[0].example == {"answer": "5"} and rows[1].example["entry_point"] == "f"
    assert [m["role"] for m in rows[2].messages] == ["system", "user"]
    assert rows[3].messages == [{"role": "user", "content": "What is 1 + 1?"}] and rows[3].example == {"answer": "2"}


def bos_tokenizer(chat_template: bool = True):
    """The built-in tokenizer with a bos token its tokenisation adds (as Llama's), to tell special tokens apart."""
    from tokenizers.processors import TemplateProcessing

    from posttrain.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<|bos|>"})
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tokenizer.bos_token_id)]
    )
    if not chat_template:
        tokenizer.chat_template = None
    return tokenizer


def test_raw_render_gives_the_policy_string_prompts_as_they_are(tmp_path: Path) -> None:
    """``render: raw``: a string prompt is tokenised as it is, with the tokenizer's special tokens (bos), as SFT
    tokenises raw prompts; a `messages` row still goes through the chat template; ``auto`` templates both."""
    from posttrain.data.packing import render_prompt
    from posttrain.rl.prompts import encode_prompts

    write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q: 2 + 3 =", "answer": "5"},
        {"messages": [{"role": "user", "content": "What is 1 + 1?"}], "answer": "2"},
    ])
    tokenizer = bos_tokenizer()
    chat_ids = [
        tokenizer(render_prompt(tokenizer, m), add_special_tokens=False)["input_ids"]
        for m in ([{"role": "user", "content": "Q: 2 + 3 ="}], [{"role": "user", "content": "What is 1 + 1?"}])
    ]
    raw_rows = load_prompts(DataSpec(source="p.jsonl", render="raw"), tmp_path, seed=0).rows
    _, raw_ids, _ = encode_prompts(tokenizer, raw_rows, 64)
    assert raw_ids[0] == [tokenizer.bos_token_id] + tokenizer("Q: 2 + 3 =", add_special_tokens=False)["input_ids"]
    assert raw_ids[1] == chat_ids[1] and raw_rows[0].question == "Q: 2 + 3 =" and raw_rows[0].example == {"answer": "5"}
    _, auto_ids, _ = encode_prompts(tokenizer, load_prompts(DataSpec(source="p.jsonl"), tmp_path, seed=0).rows, 64)
    assert auto_ids == chat_ids


def test_raw_prompts_need_no_chat_template(tmp_path: Path) -> None:
    """A base model's tokenizer without a chat template can run RL on raw prompts."""
    from posttrain.rl.prompts import encode_prompts

    write_jsonl(tmp_path / "p.jsonl", [{"question": "2 + 3 =", "answer": "5"}])
    tokenizer = bos_tokenizer(chat_template=False)
    kept, ids, dropped = encode_prompts(tokenizer, load_prompts(DataSpec(source="p.jsonl", render="raw"), tmp_path, 0).rows, 64)
    assert len(kept) == 1 and dropped == 0 and ids[0][0] == tokenizer.bos_token_id


def test_bad_prompt_rows_name_file_and_line_or_are_skipped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "ok?", "answer": "1"}, {"text": "no prompt"}, "{broken"])
    with pytest.raises(DataError, match=rf"{path}:2: an RL prompt row needs `question`, `prompt` or `messages`"):
        load_prompts(DataSpec(source="p.jsonl"), tmp_path, seed=0)
    data = load_prompts(DataSpec(source="p.jsonl", on_bad_row="skip"), tmp_path, seed=0)
    assert len(data.rows) == 1 and data.skipped == 2


def test_builtin_prompt_sets(tmp_path: Path) -> None:
    code = load_prompts(DataSpec(source="builtin:code", split="test"), tmp_path, seed=0).rows
    assert code and all({"tests", "entry_point"} <= set(row.example) for row in code)
    arithmetic = load_prompts(DataSpec(source="builtin:arithmetic", count=5, levels=[2]), tmp_path, seed=0).rows
    assert len(arithmetic) == 5 and all(row.example["level"] == 2 and "answer" in row.example for row in arithmetic)
    with pytest.raises(DataError, match="holds no prompts"):
        load_prompts(DataSpec(source="builtin:corpus"), tmp_path, seed=0)


def test_reward_model_stage_paths_resolve_to_the_run_checkpoint(tmp_path: Path) -> None:
    entry = RewardEntry(source="reward_model", args={"path": "stage:rm"})
    with pytest.raises(CheckpointError, match="names no finished stage of this run.*finished stages: none"):
        resolve_entry_args(entry, tmp_path, "cpu")
    (tmp_path / "rm" / "checkpoint").mkdir(parents=True)
    (tmp_path / "rm" / "checkpoint" / "config.json").write_text("{}")
    assert resolve_entry_args(entry, tmp_path, "cuda:0") == {"path": str(tmp_path / "rm" / "checkpoint"), "device": "cuda:0"}
    explicit = RewardEntry(source="reward_model", args={"path": "/models/rm", "device": "cpu"})
    assert resolve_entry_args(explicit, tmp_path, "cuda:0") == {"path": "/models/rm", "device": "cpu"}


def test_reward_file_arguments_are_relative_to_the_recipe_folder(tmp_path: Path) -> None:
    recipe_dir = tmp_path / "recipes"
    (recipe_dir / "constitutions").mkdir(parents=True)
    (recipe_dir / "constitutions" / "c.yaml").write_text("principles: []")
    (recipe_dir / "my_reward.py").write_text("def score(p, c, e): return 1.0")
    judge = RewardEntry(source="ai_judge", args={"path": "/models/judge", "constitution": "constitutions/c.yaml"})
    assert resolve_entry_args(judge, tmp_path, "cpu", recipe_dir)["constitution"] == str(recipe_dir / "constitutions" / "c.yaml")
    own = RewardEntry(source="python", args={"function": "my_reward.py:score"})
    assert resolve_entry_args(own, tmp_path, "cpu", recipe_dir) == {"function": f"{recipe_dir / 'my_reward.py'}:score"}
    # a file that is not in the recipe's folder stays as given (relative to the working directory)
    elsewhere = RewardEntry(source="python", args={"function": "lib/other.py:score"})
    assert resolve_entry_args(elsewhere, tmp_path, "cpu", recipe_dir) == {"function": "lib/other.py:score"}
