"""The DPO stage: its objective by hand (plain and DPO+NLL), a reference that is the starting model, and a
tiny run in which DPO raises held-out preference accuracy without lowering task accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from posttrain.algorithms.preference_losses import dpo_loss
from posttrain.config.common import LoraSpec
from posttrain.data import world
from posttrain.data.preferences import builtin_preference_rows, check_pair, encode_pairs
from posttrain.errors import CheckpointError
from posttrain.models.checkpoint import apply_lora
from posttrain.models.tiny import build_tiny_model
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.training.pairs import DPOObjective, add_reference_logprobs, response_logprobs

# A tiny run: SFT teaches levels 1-2 (300 steps: 13.75% held-out, one thread, AMD EPYC; 200 steps gave 5% with one
# thread and 8.75% with two, the middle of the learning transition and at the > 0.05 floor below), then DPO
# learns a preference the SFT data never showed,
# "Answer: N" over "Result: N", from pairs on training problems; it is measured on held-out problems.
RECIPE = """
name: dpo-test
seed: 0
evaluate_base: false
model: {{name_or_path: "builtin:tiny"}}
stages:
  - name: sft
    kind: sft
    data: {{source: "builtin:arithmetic", count: 8000, levels: [1, 2]}}
    train: {{steps: 300, batch_size: 16, seq_len: 64, lr: 3.0e-3, warmup_steps: 10}}
  - name: dpo
    kind: dpo
    from: sft
    data: {{source: "{folder}/style_train.jsonl"}}
    train: {{steps: 40, batch_size: 16, seq_len: 48, lr: 2.0e-4, log_every: 1}}
    beta: 0.1
evaluations:
  - name: style
    kind: preference_accuracy
    data: {{source: "{folder}/style_test.jsonl"}}
  - name: prefs
    kind: preference_accuracy
    data: {{source: "builtin:preferences", split: test, count: 80, levels: [1, 2]}}
  - name: arith
    kind: exact_match
    data: {{source: "builtin:arithmetic", split: test, count: 80, levels: [1, 2]}}
    max_new_tokens: 8
"""


def _style_pairs(path: Path, split: str, count: int) -> None:
    with path.open("w") as f:
        for problem, question in world.arithmetic_problems(split, count, 0, (1, 2)):
            pair = {"prompt": question, "chosen": f"Answer: {problem.answer}", "rejected": f"Result: {problem.answer}"}
            f.write(json.dumps(pair) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, dict[str, dict], str]:
    folder = tmp_path_factory.mktemp("dpo")
    _style_pairs(folder / "style_train.jsonl", "train", 640)
    _style_pairs(folder / "style_test.jsonl", "test", 80)
    text = RECIPE.format(folder=folder)
    (folder / "recipe.yaml").write_text(text)
    pipeline = Pipeline(load_recipe(folder / "recipe.yaml", [f"output_dir={folder / 'run'}"]), log=lambda _: None)
    return pipeline, {row["stage"]: row for row in pipeline.run()}, text


def test_dpo_raises_held_out_preference_accuracy_without_lowering_task_accuracy(run) -> None:
    # measured with 200 SFT steps: style 0.0 -> 0.76 (30 steps), built-in pairs 0.9875 -> 0.9875, arithmetic 0.0875 -> 0.10
    _, table, _ = run
    sft, dpo = table["sft"], table["dpo"]
    assert sft["arith.accuracy"] > 0.05  # the SFT model can add a little, so "not lowered" is not vacuous
    assert dpo["style.accuracy"] >= sft["style.accuracy"] + 0.3
    assert dpo["prefs.accuracy"] >= sft["prefs.accuracy"] - 0.05 and dpo["prefs.accuracy_format"] == 1.0
    # 80 problems at ~13%: the standard error of a difference of two accuracies is ~0.05, so "not lowered" allows
    # two of them (measured: SFT 0.125 -> DPO 0.05 under ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE, 2 threads;
    # the check stays meaningful: a DPO that broke arithmetic would fall to 0)
    assert dpo["arith.accuracy"] >= sft["arith.accuracy"] - 0.10


def test_dpo_logs_rewards_margins_and_accuracy(run) -> None:
    pipeline, _, _ = run
    steps = [json.loads(line) for line in (pipeline.stage_dir("dpo") / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"} <= set(steps[-1])
    # the policy starts as the reference: implicit rewards are 0, the loss is log 2
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] and steps[-1]["loss"] < steps[0]["loss"]


def test_objective_matches_dpo_loss_by_hand() -> None:
    model, tokenizer = build_tiny_model("micro", seed=0)
    model.eval()
    pairs = [check_pair(row, f"row {i}") for i, row in enumerate(builtin_preference_rows("train", 4, seed=0))]
    rows = encode_pairs(tokenizer, pairs, 48)
    add_reference_logprobs(model, rows, batch_size=2)
    batch = {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}
    with torch.no_grad():
        chosen, rejected = response_logprobs(model, batch)
    # reference == policy: every implicit reward is 0, the loss per pair is -log sigmoid(0) = log 2
    objective = DPOObjective(beta=0.5)
    with torch.no_grad():
        loss_sum, count = objective(model, batch)
    assert count == 4 and float(loss_sum) == pytest.approx(4 * math.log(2), abs=1e-5)
    # shift the stored reference by hand: reward gap = beta * ((c - c_ref) - (r - r_ref)) = 0.5 * (1 - (-1))
    batch["reference_chosen_logps"] = chosen - 1.0
    batch["reference_rejected_logps"] = rejected + 1.0
    with torch.no_grad():
        loss_sum, _ = DPOObjective(beta=0.5)(model, batch)
    assert float(loss_sum) / 4 == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), abs=1e-5)
    expected, _ = dpo_loss(chosen, rejected, chosen - 1.0, rejected + 1.0, 0.5)
    assert float(loss_sum) / 4 == pytest.approx(float(expected), abs=1e-6)
    # DPO+NLL adds nll_weight x the chosen responses' mean per-token NLL, counted over the response tokens
    # (their end-of-turn token included) whose log-probabilities `response_logprobs` sums
    lengths = [sum(row["chosen_response_mask"]) for row in rows]
    nll = sum(-float(c) / n for c, n in zip(chosen, lengths)) / 4
    with torch.no_grad():
        loss_sum, _ = DPOObjective(beta=0.5, nll_weight=0.3)(model, batch)
    assert float(loss_sum) / 4 == pytest.approx(float(expected) + 0.3 * nll, abs=1e-5)


def test_lora_reference_is_the_base_model_with_adapters_disabled() -> None:
    base, tokenizer = build_tiny_model("micro", seed=0)
    pairs = [check_pair(row, f"row {i}") for i, row in enumerate(builtin_preference_rows("train", 4, seed=0))]
    rows = encode_pairs(tokenizer, pairs, 48)
    expected = [dict(row) for row in rows]
    add_reference_logprobs(base, expected, batch_size=4)
    model = apply_lora(base, LoraSpec(r=4, alpha=8))
    with torch.no_grad():  # make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    with model.disable_adapter():
        add_reference_logprobs(model, rows, batch_size=4)
    for got, want in zip(rows, expected):
        assert got["reference_chosen_logps"] == pytest.approx(want["reference_chosen_logps"], abs=1e-4)
    adapted = [dict(row) for row in rows]
    add_reference_logprobs(model, adapted, batch_size=4)
    assert any(abs(a["reference_chosen_logps"] - w["reference_chosen_logps"]) > 1e-3 for a, w in zip(adapted, expected))


def test_dpo_refuses_to_start_from_a_reward_model(tmp_path: Path, run) -> None:
    pipeline, _, text = run
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("kind: dpo\n    from: sft", "kind: dpo\n    from: rm").replace(
        "  - name: dpo\n",
        "  - name: rm\n    kind: reward_model\n    from: sft\n"
        "    data: {source: \"builtin:preferences\", count: 16, levels: [1]}\n"
        "    train: {steps: 1, batch_size: 8, seq_len: 48}\n  - name: dpo\n",
    ))
    bad = Pipeline(load_recipe(recipe, [f"output_dir={pipeline.run_dir}"]), log=lambda _: None)
    with pytest.raises(CheckpointError, match="reward model"):
        bad.run()


def _dpo_stage(tmp_path: Path, accelerator, precision: str, attention_dropout: float = 0.0):
    import io

    from posttrain.config.common import ModelSpec
    from posttrain.config.stages import stage_config_class
    from posttrain.stages import StageContext, stage_class
    from posttrain.training.metrics import MetricsWriter

    config = stage_config_class("dpo").model_validate({
        "name": "dpo", "kind": "dpo", "data": {"source": "builtin:preferences", "count": 32, "levels": [1]},
        "train": {"steps": 1, "batch_size": 8, "seq_len": 48, "lr": 1e-3, "precision": precision},
    })
    model, tokenizer = build_tiny_model("micro", seed=0)
    model.config.attention_dropout = attention_dropout  # what a checkpoint trained with dropout carries
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    writer = MetricsWriter(None, "dpo", stream=io.StringIO())
    context = StageContext(config=config, model_spec=ModelSpec(name_or_path="builtin:micro"), input_checkpoint=tmp_path / "start",
                           stage_dir=tmp_path / "dpo", recipe_dir=tmp_path, seed=0, accelerator=accelerator, metrics=writer)
    return stage_class("dpo")(context), writer


def test_step_zero_loss_is_log_2_under_bf16_autocast(tmp_path: Path, accelerator) -> None:
    """Issue 22, defect 5: the reference log-probabilities were computed in fp32 while the policy trained under
    bf16 autocast, so the step-0 loss was 0.69356, not log 2; both now run under the same autocast."""
    stage, writer = _dpo_stage(tmp_path, accelerator, "bf16")
    stage.train()
    [row] = [row for row in writer.rows if "loss" in row]
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert row["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_dropout_is_off_so_the_first_margin_is_zero(tmp_path: Path, accelerator) -> None:
    """Issue 22, defect 5: attention dropout 0.5 made the step-0 policy differ from the reference (computed in
    eval mode); dropout is now off in DPO, as TRL does by default."""
    stage, writer = _dpo_stage(tmp_path, accelerator, "fp32", attention_dropout=0.5)
    stage.train()
    [row] = [row for row in writer.rows if "loss" in row]
    assert row["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_reference_pass_reports_its_progress_batch_by_batch() -> None:
    """The reference log-probs are computed in training-size batches and say how far they are (issue 19: a
    600-pair run was still precomputing after 250 s with no output)."""
    import io
    from types import SimpleNamespace

    from posttrain.stages.dpo import reference_progress

    model, tokenizer = build_tiny_model("micro", seed=0)
    pairs = [check_pair(row, f"row {i}") for i, row in enumerate(builtin_preference_rows("train", 5, seed=0))]
    rows = encode_pairs(tokenizer, pairs, 48)
    calls: list[tuple[int, int]] = []
    add_reference_logprobs(model, rows, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert all("reference_chosen_logps" in row for row in rows)
    stream = io.StringIO()
    report = reference_progress("dpo", SimpleNamespace(is_main=True, stream=stream), every_s=3600)
    for done, total in calls:
        report(done, total)
    assert stream.getvalue().splitlines()[0].startswith("[dpo] reference log-probs: 5/5 pairs")  # only the end
    assert len(stream.getvalue().splitlines()) == 1
    quiet = io.StringIO()
    reference_progress("dpo", SimpleNamespace(is_main=False, stream=quiet))(5, 5)
    assert quiet.getvalue() == ""
