"""The `curate` stage in a recipe: checks at `validate` time, a run on the micro model (counts in the manifest
and report, the next stage reading `stage:NAME/rows` from the model before the curate stage), and reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.data import world
from posttrain.errors import RecipeError
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

RECIPE = """\
name: cur
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
evaluate_base: false
stages:
  - name: pretrain
    kind: pretrain
    data: {{source: "builtin:corpus", count: 16}}
    train: {{steps: 2, batch_size: 4, seq_len: 32}}
  - name: clean
    kind: curate
    sources:
      - {{data: {{source: train.jsonl}}}}
  - name: sft
    kind: sft
    data: {{source: "stage:clean/rows"}}
    train: {{steps: 2, batch_size: 4, seq_len: 32}}
evaluations:
  - name: arith
    kind: exact_match
    data: {{source: "builtin:arithmetic", split: test, count: 40, levels: [2, 3]}}
    max_new_tokens: 4
"""


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def leaky(tmp_path: Path) -> Path:
    """A recipe whose SFT file holds 60 training rows, 10 of the evaluation's rows and 5 exact repeats."""
    train = world.arithmetic_rows("train", 60, 0, (2, 3))
    unique = list({json.dumps(r, sort_keys=True): r for r in train}.values())
    leaked = world.arithmetic_rows("test", 40, 0, (2, 3))[:10]
    write_rows(tmp_path / "train.jsonl", unique + leaked + unique[:5])
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(output_dir=tmp_path / "run"))
    return tmp_path


def problems(folder: Path, overrides: list[str]) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(folder / "recipe.yaml", overrides)
    return str(info.value)


@pytest.mark.parametrize("override, message", [
    ("stages.clean.sources=[{data: {source: train.jsonl}, weight: -1}]",
     "stages[1] (clean).sources[0].weight (line 14): Value error, a mixture weight must be a finite number >= 0, got -1"),
    ("stages.clean.sources=[{data: {source: train.jsonl}, weight: .nan}]", "sources[0].weight (line 14): Value error, "
     "a mixture weight must be a finite number >= 0, got nan"),
    ("stages.clean.sources=[{data: {source: missing.jsonl}}]", "stages[1] (clean).sources[0].data.source"),
    ("stages.clean.decontaminate.against=[nope]", "stages[1] (clean).decontaminate.against: ['nope'] name no evaluation set (sets: ['arith'])"),
    ("stages.sft.from=clean", "stages[2] (sft).from: 'clean' is a curate stage, which writes data and no checkpoint"),
    ("stages.clean.evaluate=true", "`evaluate` must be false"),
    ("stages.clean.quality.filter=filters.py", "quality filter 'filters.py': a function in a file is written"),
    ("stages.sft.data.source=stage:clean/phase_1", "stage 'clean' has no output 'phase_1'; its outputs: stage:clean/rows, stage:clean/removed"),
])
def test_bad_curation_settings_are_validate_errors_with_their_key_path(leaky: Path, override: str, message: str):
    assert message in problems(leaky, [override])


def test_missing_source_file_is_named(leaky: Path):
    assert "data file not found: " + str(leaky / "missing.jsonl") in problems(leaky, ["stages.clean.sources=[{data: {source: missing.jsonl}}]"])


def test_the_evaluation_sets_are_bound_and_the_next_stage_starts_from_the_model_before(leaky: Path):
    recipe = load_recipe(leaky / "recipe.yaml").recipe
    assert [s.name for s in recipe.stage("clean").decontaminate.sets] == ["arith"]
    assert [recipe.parent_of(i) for i in range(3)] == [None, None, "pretrain"]


def test_a_run_removes_leaked_and_repeated_rows_and_reports_them(leaky: Path, accelerator):
    log: list[str] = []
    Pipeline(load_recipe(leaky / "recipe.yaml"), accelerator=accelerator, log=log.append).run()
    manifest = json.loads((leaky / "run/stages/clean/manifest.json").read_text())
    curation = manifest["summary"]["curation"]
    assert curation["removed"]["decontamination"] == 10 and curation["contaminated_by_set"] == {"arith": 10}
    assert curation["removed"]["dedup.exact"] == 5
    assert curation["rows_written"] == curation["rows_read"] - 15
    assert len(curation["examples"]["decontamination"]) == 3
    rows = [json.loads(line) for line in (leaky / "run/stages/clean/data/rows.jsonl").read_text().splitlines()]
    test_questions = {r["messages"][0]["content"] for r in world.arithmetic_rows("test", 40, 0, (2, 3))}
    assert not any(r["messages"][0]["content"] in test_questions for r in rows)
    removed = (leaky / "run/stages/clean/data/removed.jsonl").read_text().splitlines()
    assert len(removed) == 15 and json.loads(removed[0])["where"].startswith(str(leaky / "train.jsonl"))
    sft = json.loads((leaky / "run/stages/sft/manifest.json").read_text())
    assert sft["input"] == str(leaky / "run/stages/pretrain/checkpoint")
    from posttrain.report import write_report

    write_report(leaky / "run")
    report = (leaky / "run/report.md").read_text()
    assert "| clean | decontamination | 10 |" in report and "| clean | contaminated by arith | 10 |" in report

    log.clear()
    Pipeline(load_recipe(leaky / "recipe.yaml"), accelerator=accelerator, log=log.append).run()
    assert any(line.startswith("[clean] reused") for line in log) and any(line.startswith("[sft] reused") for line in log)
    log.clear()  # another evaluation set: the curation and the stage that reads it run again
    Pipeline(load_recipe(leaky / "recipe.yaml", ["evaluations.arith.data.count=20"]), accelerator=accelerator, log=log.append).run()
    assert "[clean] running curate (writes data only)" in log and any(line.startswith("[sft] running") for line in log)
    # pre-training checks its own data against the evaluation sets too (on by default), so it re-runs as well
    assert any(line.startswith("[pretrain] running") for line in log)


def test_every_evaluation_set_of_the_quickstart_is_checked_and_readable(tmp_path: Path):
    """`evaluations:` and each stage's `heldout:` (GRPO, PPO) become the curate stage's sets, and every one of
    them (exact-match, preference pairs, perplexity text) yields rows to index."""
    from posttrain.curation.curate import contamination_index

    text = (Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml").read_text()
    curate_stage = ("  - name: clean\n    kind: curate\n    sources:\n"
                    "      - {data: {source: \"builtin:arithmetic\", count: 50}}\n\n  - name: pretrain\n")
    (tmp_path / "recipe.yaml").write_text(text.replace("  - name: pretrain\n", curate_stage, 1))
    recipe = load_recipe(tmp_path / "recipe.yaml").recipe
    clean = recipe.stage("clean")
    assert sorted(s.name for s in clean.decontaminate.sets) == ["arithmetic", "corpus", "grpo.heldout", "near_misses", "ppo.heldout", "preferences"]
    index = contamination_index(clean, tmp_path, recipe.seed)
    assert set(index.set_sizes()) == {s.name for s in clean.decontaminate.sets}
    assert recipe.parent_of(1) is None  # pretrain, after the curate stage, starts from the recipe's model


def test_a_changed_evaluation_file_changes_the_curate_stage_fingerprint(leaky: Path):
    from posttrain.fingerprints import stage_fingerprints

    write_rows(leaky / "eval.jsonl", world.arithmetic_rows("test", 20, 0, (2, 3)))
    override = ["evaluations.arith.data={source: eval.jsonl}"]
    before = stage_fingerprints(load_recipe(leaky / "recipe.yaml", override))
    write_rows(leaky / "eval.jsonl", world.arithmetic_rows("test", 21, 0, (2, 3)))  # same path, one more row
    after = stage_fingerprints(load_recipe(leaky / "recipe.yaml", override))
    # pretrain checks its own data against the evaluation sets (on by default): it re-runs too
    assert before[0] != after[0] and before[1] != after[1] and before[2] != after[2]
