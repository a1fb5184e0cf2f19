"""End to end on the micro model: SFT on the demonstrations -> critique/revise -> SFT on the revisions,
AI-judged pairs, and DPO on the critique stage's pairs, with the violation evaluator after every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

CONSTITUTION = Path(__file__).resolve().parents[2] / "recipes" / "constitutions" / "arithmetic.yaml"
RECIPE = f"""\
name: rlaif-micro
output_dir: {{output_dir}}
model: {{{{name_or_path: "builtin:micro"}}}}
stages:
  - name: sft
    kind: sft
    data: {{{{source: "builtin:rlaif", count: 1500, levels: [1, 2], constitution: {CONSTITUTION}}}}}
    train: {{{{steps: 60, batch_size: 16, seq_len: 128, lr: 3.0e-3, log_every: 10}}}}
  - name: critique
    kind: constitutional
    constitution: {CONSTITUTION}
    data: {{{{source: "builtin:arithmetic", count: 12, levels: [1]}}}}
    rounds: 2
    response: {{{{max_new_tokens: 10, temperature: 1.0}}}}
    revise: {{{{max_new_tokens: 10, temperature: 0.0}}}}
    evaluate: false
  - name: sft_revised
    kind: sft
    from: sft
    data: {{{{source: "stage:critique/revisions"}}}}
    train: {{{{steps: 2, batch_size: 4, seq_len: 64, lr: 1.0e-3, log_every: 1}}}}
  - name: judge
    kind: ai_judge
    from: sft
    constitution: {CONSTITUTION}
    data: {{{{source: "builtin:arithmetic", count: 12, levels: [1]}}}}
    candidates: 4
    generation: {{{{max_new_tokens: 10}}}}
    evaluate: false
  - name: dpo
    kind: dpo
    from: sft_revised
    data: {{{{source: "stage:critique/pairs"}}}}
    train: {{{{steps: 2, batch_size: 4, seq_len: 96, lr: 1.0e-3, log_every: 1}}}}
evaluations:
  - name: principles
    kind: principle_violations
    data: {{{{source: "builtin:arithmetic", split: test, count: 8, levels: [1, 2]}}}}
    max_new_tokens: 10
"""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory, accelerator):
    folder = tmp_path_factory.mktemp("rlaif")
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=folder / "run"))
    log: list[str] = []
    table = Pipeline(load_recipe(recipe), accelerator=accelerator, log=log.append).run()
    return folder / "run", table


def summary(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / stage / "manifest.json").read_text())["summary"]


def test_constitutional_stage_writes_revisions_pairs_and_counts(run) -> None:
    run_dir, _ = run
    data = run_dir / "stages" / "critique" / "data"
    trace, revisions, pairs = (read_jsonl(data / f"{name}.jsonl") for name in ("trace", "revisions", "pairs"))
    facts = summary(run_dir, "critique")
    assert len(trace) == 12 and all(len(item["rounds"]) == 2 for item in trace)
    dropped = sum(facts[f"revise/dropped_{r}"] for r in ("empty", "unchanged", "too_long", "template_echo"))
    assert dropped + facts["revise/accepted"] == 24
    assert dropped == sum(r["dropped"] is not None for item in trace for r in item["rounds"])
    assert len(revisions) == facts["revise/prompts_revised"] >= 1
    for row in revisions:
        assert row["messages"][0]["role"] == "user" and row["messages"][-1]["role"] == "assistant"
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"] and pair["principles"] and len(pair["critiques"]) == len(pair["principles"])
    assert 0 <= facts["violations/after/any"] <= 1 and "violations/before/answer_format" in facts


def test_judge_stage_counts_labels_and_ties(run) -> None:
    run_dir, _ = run
    facts = summary(run_dir, "judge")
    pairs = read_jsonl(run_dir / "stages" / "judge" / "data" / "pairs.jsonl") if facts["judge/labelled"] else []
    assert facts["judge/labelled"] + facts["judge/ties_dropped"] == facts["judge/pairs"]
    assert facts["judge/pairs"] + facts["judge/identical_or_empty_skipped"] == 24  # 12 prompts x 2 pairs
    assert len(pairs) == facts["judge/labelled"]
    for pair in pairs:  # labelled only when both orders agree
        assert pair["judge_forward"] * pair["judge_backward"] < 0


def test_later_stages_consume_the_outputs_and_are_evaluated(run) -> None:
    run_dir, table = run
    assert summary(run_dir, "dpo")["pairs"] == len(read_jsonl(run_dir / "stages" / "critique" / "data" / "pairs.jsonl"))
    stages = [row["stage"] for row in table]
    assert stages == ["base", "sft", "sft_revised", "dpo"]  # critique and judge set evaluate: false
    assert all(0 <= row["principles.violation_rate"] <= 1 for row in table)
