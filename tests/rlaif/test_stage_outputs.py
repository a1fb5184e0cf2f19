"""`stage:NAME/OUTPUT` data sources: recipe checks, binding to the written file, fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.config.common import DataSpec
from posttrain.config.sft import SFTConfig
from posttrain.data.stage_outputs import bind_stage_outputs
from posttrain.errors import DataError, RecipeError
from posttrain.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
CONSTITUTION = REPO / "recipes" / "constitutions" / "arithmetic.yaml"
RECIPE = f"""\
name: r
stages:
  - name: sft
    kind: sft
    data: {{source: "builtin:rlaif", count: 10}}
    train: {{steps: 1}}
  - name: critique
    kind: constitutional
    constitution: {CONSTITUTION}
    data: {{source: "builtin:arithmetic"}}
  - name: tuned
    kind: sft
    from: sft
    data: {{source: "SOURCE"}}
    train: {{steps: 1}}
"""


def recipe_problem(tmp_path: Path, source: str, write_recipe) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, RECIPE.replace("SOURCE", source)))
    return str(info.value)


def test_a_stage_output_of_an_earlier_stage_validates(tmp_path: Path, write_recipe) -> None:
    loaded = load_recipe(write_recipe(tmp_path, RECIPE.replace("SOURCE", "stage:critique/revisions")))
    assert loaded.recipe.stages[2].data.source == "stage:critique/revisions"


@pytest.mark.parametrize("source, message", [
    ("stage:nowhere/revisions", "'stage:nowhere/revisions' names no earlier stage"),
    ("stage:critique/summary", "stage 'critique' has no output 'summary'; its outputs: stage:critique/revisions, stage:critique/pairs"),
    ("stage:sft/revisions", "stage 'sft' has no output 'revisions'; its outputs: none (a sft stage writes no data)"),
])
def test_bad_stage_sources_are_named_with_their_line(tmp_path: Path, write_recipe, source: str, message: str) -> None:
    problem = recipe_problem(tmp_path, source, write_recipe)
    assert "stages[2] (tuned).data.source (line 14)" in problem and message in problem


def test_stage_outputs_cannot_be_evaluated(tmp_path: Path, write_recipe) -> None:
    text = RECIPE.replace("SOURCE", "stage:critique/revisions") + (
        "evaluations:\n  - {name: e, kind: exact_match, data: {source: \"stage:critique/revisions\"}}\n")
    with pytest.raises(RecipeError, match=r"evaluations\[0\] \(e\).data.source: stage outputs cannot be evaluated"):
        load_recipe(write_recipe(tmp_path, text))


def test_bind_replaces_the_source_with_the_written_file(tmp_path: Path) -> None:
    config = SFTConfig(name="tuned", kind="sft", data=DataSpec(source="stage:critique/revisions"), train={"steps": 1})
    with pytest.raises(DataError, match="stage 'critique' has not written"):
        bind_stage_outputs(config, tmp_path)
    written = tmp_path / "critique" / "data" / "revisions.jsonl"
    written.parent.mkdir(parents=True)
    written.write_text("{}\n")
    bound = bind_stage_outputs(config, tmp_path)
    assert bound.data.source == str(written) and bound.train == config.train
    plain = SFTConfig(name="s", kind="sft", data=DataSpec(source="builtin:arithmetic"), train={"steps": 1})
    assert bind_stage_outputs(plain, tmp_path) is plain


def test_consumer_fingerprint_follows_the_producer_and_the_constitution(tmp_path: Path, write_recipe) -> None:
    from posttrain.pipeline import Pipeline

    text = RECIPE.replace("SOURCE", "stage:critique/revisions").replace(str(CONSTITUTION), "c.yaml")
    text = text.replace('source: "builtin:rlaif", count: 10', 'source: "builtin:rlaif", count: 10, constitution: c.yaml')
    (tmp_path / "c.yaml").write_text(CONSTITUTION.read_text())
    (tmp_path / "templates").symlink_to(CONSTITUTION.parent / "templates")
    path = write_recipe(tmp_path, text)
    base = Pipeline(load_recipe(path), accelerator=object()).fingerprints()
    rounds = Pipeline(load_recipe(path, ["stages.critique.rounds=3"]), accelerator=object()).fingerprints()
    assert rounds[0] == base[0] and rounds[1] != base[1] and rounds[2] != base[2]  # `tuned` starts from sft
    (tmp_path / "c.yaml").write_text(CONSTITUTION.read_text().replace("filler words?", "filler words at all?"))
    edited = Pipeline(load_recipe(path), accelerator=object()).fingerprints()
    assert edited[0] != base[0]  # the demonstrations are rendered from the constitution's text
