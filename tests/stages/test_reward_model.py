"""The reward-model stage: learns a separable preference, saves a checkpoint others can load and use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from posttrain.algorithms.preference_losses import bradley_terry_loss
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.training.pairs import BradleyTerryObjective

# every chosen response ends in "yes" and every rejected one in "no": separable from the last token
PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a + b} yes", "rejected": f"{a + b} no"}
    for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (0, 9), (4, 4), (6, 3)]
]

RECIPE = """
name: rm-test
model: {name_or_path: "builtin:micro"}
stages:
  - name: rm
    kind: reward_model
    data: {source: pairs.jsonl}
    train: {steps: 12, batch_size: 8, seq_len: 32, lr: 1.0e-2, log_every: 1}
    decontaminate: false    # `pairs` below evaluates on these training pairs on purpose (training accuracy)
  - name: rm_lora
    kind: reward_model
    from: base
    data: {source: pairs.jsonl}
    train: {steps: 12, batch_size: 8, seq_len: 32, lr: 2.0e-2, log_every: 1}
    lora: {r: 4, alpha: 8}
    decontaminate: false
evaluations:
  - name: pairs
    kind: pairwise_accuracy
    data: {source: pairs.jsonl}
  - name: arithmetic
    kind: exact_match
    data: {source: "builtin:arithmetic", split: test, count: 4, levels: [2]}
    max_new_tokens: 2
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, list[dict]]:
    folder = tmp_path_factory.mktemp("rm")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    (folder / "recipe.yaml").write_text(RECIPE)
    pipeline = Pipeline(load_recipe(folder / "recipe.yaml", [f"output_dir={folder / 'run'}"]), log=lambda _: None)
    return pipeline, pipeline.run()


def _metrics(pipeline: Pipeline, stage: str) -> list[dict]:
    path = pipeline.stage_dir(stage) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_learns_a_separable_preference(run: tuple[Pipeline, list[dict]]) -> None:
    pipeline, table = run
    steps = _metrics(pipeline, "rm")
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # a new head scores both sides alike
    assert steps[-1]["accuracy"] == 1.0 and steps[-1]["loss"] < steps[0]["loss"]
    assert {"margin", "chosen_reward", "rejected_reward"} <= set(steps[-1])
    rows = {row["stage"]: row for row in table}
    assert rows["rm"]["pairs.accuracy"] == 1.0 and rows["rm"]["pairs.margin"] > 0
    assert rows["rm_lora"]["pairs.accuracy"] == 1.0


def test_evaluations_follow_the_kind_of_model(run: tuple[Pipeline, list[dict]]) -> None:
    _, table = run
    rows = {row["stage"]: row for row in table}
    assert "arithmetic.accuracy" in rows["base"] and "pairs.accuracy" not in rows["base"]
    assert "pairs.accuracy" in rows["rm"] and "arithmetic.accuracy" not in rows["rm"]


def _texts(tokenizer) -> tuple[list[str], list[str]]:
    def render(row: dict, side: str) -> str:
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[side]}]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    return [render(row, "chosen") for row in PAIRS], [render(row, "rejected") for row in PAIRS]


@pytest.mark.parametrize("stage", ["rm", "rm_lora"])
def test_checkpoint_loads_as_a_sequence_classifier(run: tuple[Pipeline, list[dict]], stage: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pipeline, _ = run
    checkpoint = pipeline.stage_dir(stage) / "checkpoint"
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert not any("lora" in name for name, _ in model.named_parameters())  # adapters merged
    chosen, rejected = _texts(tokenizer)
    with torch.no_grad():  # one padded batch: scores are read at each text's last real token
        scores = model(**tokenizer(chosen + rejected, return_tensors="pt", padding=True)).logits[:, 0]
    assert bool((scores[: len(PAIRS)] > scores[len(PAIRS) :]).all())


def test_checkpoint_works_as_a_reward_source(run: tuple[Pipeline, list[dict]]) -> None:
    from posttrain.rewards import build_reward_source

    pipeline, _ = run
    source = build_reward_source("reward_model", path=str(pipeline.stage_dir("rm") / "checkpoint"), batch_size=4)
    prompts = [row["prompt"] for row in PAIRS]
    chosen = source(prompts, [row["chosen"] for row in PAIRS])
    rejected = source(prompts, [row["rejected"] for row in PAIRS])
    assert all(c.score > r.score for c, r in zip(chosen, rejected))


class _FixedScores(torch.nn.Module):
    """Stands in for a reward model: returns given scores for the stacked chosen + rejected batch."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.scores = torch.tensor(scores).unsqueeze(-1)

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        return type("Output", (), {"logits": self.scores})()


def test_objective_sums_the_margin_loss_over_pairs() -> None:
    model = _FixedScores([2.0, 0.5, 1.0, 1.0])  # chosen 2.0, 0.5; rejected 1.0, 1.0
    batch = {"chosen_input_ids": torch.zeros(2, 3, dtype=torch.long), "rejected_input_ids": torch.zeros(2, 3, dtype=torch.long),
             "margin": torch.tensor([0.5, 0.0])}
    objective = BradleyTerryObjective(margin_key="margin")
    loss_sum, pairs = objective(model, batch)
    # by hand: -log sigmoid(2 - 1 - 0.5) - log sigmoid(0.5 - 1 - 0)
    expected = -math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(0.5)))
    assert pairs == 2 and float(loss_sum) == pytest.approx(expected, abs=1e-6)
    reference, _ = bradley_terry_loss(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.0]))
    assert float(loss_sum) == pytest.approx(2 * float(reference))
    assert objective.step_metrics() == pytest.approx({"accuracy": 0.5, "margin": 0.25, "chosen_reward": 1.25, "rejected_reward": 1.0})
    assert objective.step_metrics() == {}  # reset for the next step
