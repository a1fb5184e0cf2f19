"""Recipe loading: every shipped recipe validates; each kind of mistake is a `RecipeError` naming the file,
the key path and (where the YAML gives it) the line; `--set` overrides; data paths relative to the recipe."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import posttrain.recipe
from posttrain.errors import RecipeError
from posttrain.data.sources import resolve_data_path
from posttrain.recipe import apply_overrides, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

# Block style, so that every key sits on a line of its own; tests edit one line and check its number.
BASE = """\
name: t
model:
  name_or_path: builtin:micro
stages:
  - name: pretrain
    kind: pretrain
    data:
      source: builtin:corpus
      count: 8
    train:
      steps: 2
      seq_len: 32
  - name: sft
    kind: sft
    from: pretrain
    data:
      source: builtin:arithmetic
      count: 8
    train:
      steps: 2
      lr: 1.0e-3
evaluations:
  - name: arith
    kind: exact_match
    data:
      source: builtin:arithmetic
      split: test
      count: 8
"""


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of ``text`` containing ``needle``."""
    found = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, (needle, found)
    return found[0]


def edited(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def recipe_error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path: Path) -> None:
    loaded = load_recipe(path)
    assert loaded.recipe.stages and loaded.path == path
    assert len({s.name for s in loaded.recipe.stages}) == len(loaded.recipe.stages)


def test_recipes_folder_is_not_empty() -> None:
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


def test_base_recipe_is_valid_and_chains_stages(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(BASE)
    recipe = load_recipe(path).recipe
    assert [s.name for s in recipe.stages] == ["pretrain", "sft"]
    assert recipe.parent_of(0) is None and recipe.parent_of(1) == "pretrain"
    assert recipe.stage("sft").train.lr == pytest.approx(1e-3)


def test_unknown_key_names_path_and_line(tmp_path: Path) -> None:
    text = edited("      lr: 1.0e-3\n", "      lr: 1.0e-3\n      lrr: 0.1\n")
    message = recipe_error(tmp_path, text)
    assert f"stages[1] (sft).train.lrr (line {line_of(text, 'lrr:')}): unknown key" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = BASE + "sead: 3\n"
    message = recipe_error(tmp_path, text)
    assert f"sead (line {line_of(text, 'sead')}): unknown key" in message


def test_wrong_type_names_path_and_line(tmp_path: Path) -> None:
    text = edited("      steps: 2\n      seq_len: 32\n", "      steps: many\n      seq_len: 32\n")
    message = recipe_error(tmp_path, text)
    assert f"stages[0] (pretrain).train.steps (line {line_of(text, 'steps: many')})" in message
    assert "integer" in message


def test_wrong_top_level_type(tmp_path: Path) -> None:
    text = BASE + "seed: abc\n"
    message = recipe_error(tmp_path, text)
    assert f"seed (line {line_of(text, 'seed: abc')})" in message


def test_unknown_stage_kind_lists_valid_kinds(tmp_path: Path) -> None:
    text = edited("    kind: sft\n", "    kind: magic\n")
    message = recipe_error(tmp_path, text)
    assert f"stages[1] (sft).kind (line {line_of(text, 'kind: magic')})" in message
    assert "unknown stage kind 'magic'" in message and "pretrain" in message and "sft" in message


def test_from_must_name_an_earlier_stage(tmp_path: Path) -> None:
    text = edited("    from: pretrain\n", "    from: later\n")
    message = recipe_error(tmp_path, text)
    assert f"stages[1] (sft).from (line {line_of(text, 'from: later')}): 'later' names no earlier stage" in message


def test_from_a_later_stage_is_an_error(tmp_path: Path) -> None:
    text = edited("    kind: pretrain\n", "    kind: pretrain\n    from: sft\n")
    message = recipe_error(tmp_path, text)
    assert "stages[0] (pretrain).from" in message and "'sft' names no earlier stage" in message


def test_from_base_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(edited("    from: pretrain\n", "    from: base\n"))
    assert load_recipe(path).recipe.parent_of(1) is None


@pytest.mark.parametrize("name", ["pretrain", "base"])
def test_duplicate_or_reserved_stage_name(tmp_path: Path, name: str) -> None:
    text = edited("  - name: sft\n", f"  - name: {name}\n")
    message = recipe_error(tmp_path, text)
    second_name_line = line_of(text, "kind: sft") - 1
    assert f"stages[1] ({name}) (line {second_name_line})" in message
    assert f"stage name {name!r}" in message


def test_missing_data_file_names_path_line_and_file(tmp_path: Path) -> None:
    text = edited("      source: builtin:arithmetic\n      count: 8\n    train:", "      source: nowhere.jsonl\n      count: 8\n    train:")
    message = recipe_error(tmp_path, text)
    line = line_of(text, "nowhere.jsonl")
    assert f"stages[1] (sft).data.source (line {line}): data file not found: {tmp_path / 'nowhere.jsonl'}" in message


def test_missing_evaluation_data_file(tmp_path: Path) -> None:
    text = edited("      source: builtin:arithmetic\n      split", "      source: held_out.jsonl\n      split")
    message = recipe_error(tmp_path, text)
    assert f"evaluations[0] (arith).data.source (line {line_of(text, 'held_out')})" in message


def test_unknown_builtin_dataset(tmp_path: Path) -> None:
    message = recipe_error(tmp_path, edited("      source: builtin:corpus\n", "      source: builtin:wiki\n"))
    assert "stages[0] (pretrain).data.source" in message and "'builtin:wiki'" in message


def test_gate_naming_no_evaluation(tmp_path: Path) -> None:
    text = BASE + "gates:\n  - metric: nope.accuracy\n    min: 0.5\n"
    message = recipe_error(tmp_path, text)
    assert "gates[0].metric: 'nope.accuracy' names no evaluation" in message and "arith" in message


def test_gate_naming_no_stage(tmp_path: Path) -> None:
    text = BASE + "gates:\n  - metric: arith.accuracy\n    min: 0.5\n    stages: [dpo]\n"
    assert "gates[0].stages: 'dpo' names no stage" in recipe_error(tmp_path, text)


def test_gate_relative_to_no_stage(tmp_path: Path) -> None:
    text = BASE + "gates:\n  - metric: arith.accuracy\n    max_drop: 0.1\n    relative_to: sfft\n"
    assert "gates[0].relative_to: 'sfft' names no stage" in recipe_error(tmp_path, text)


def test_gate_relative_to_a_stage_that_is_not_evaluated(tmp_path: Path) -> None:
    gate = "gates:\n  - metric: arith.accuracy\n    max_drop: 0.1\n    relative_to: base\n"
    message = recipe_error(tmp_path, "evaluate_base: false\n" + BASE + gate)
    assert "gates[0].relative_to: 'base' is not evaluated" in message


def test_gate_baseline_is_the_nearest_evaluated_ancestor(tmp_path: Path) -> None:
    # sft starts from pretrain; with pretrain unevaluated a max_drop gate on sft measures from the base model,
    # and with the base unevaluated too there is nothing to measure from: an error before any training
    text = edited("  - name: pretrain\n", "  - name: pretrain\n    evaluate: false\n")
    gate = "gates:\n  - metric: arith.accuracy\n    max_drop: 0.1\n    stages: [sft]\n"
    good = tmp_path / "good.yaml"
    good.write_text(text + gate)
    recipe = load_recipe(good).recipe
    assert [recipe.evaluated_ancestor(i) for i in range(2)] == ["base", "base"]
    message = recipe_error(tmp_path, "evaluate_base: false\n" + text + gate)
    assert "gates[0]: nothing stage 'sft' descends from is evaluated" in message


def test_gate_without_condition(tmp_path: Path) -> None:
    text = BASE + "gates:\n  - metric: arith.accuracy\n"
    message = recipe_error(tmp_path, text)
    assert f"gates[0] (line {line_of(text, '- metric')})" in message and "max_drop" in message


def test_unknown_evaluator_kind(tmp_path: Path) -> None:
    text = edited("    kind: exact_match\n", "    kind: bleu\n")
    message = recipe_error(tmp_path, text)
    assert f"evaluations[0] (arith).kind (line {line_of(text, 'kind: bleu')})" in message
    assert "exact_match" in message and "perplexity" in message


def test_steps_and_epochs_both_missing(tmp_path: Path) -> None:
    text = edited("      steps: 2\n      lr: 1.0e-3\n", "      lr: 1.0e-3\n")
    message = recipe_error(tmp_path, text)
    assert "stages[1] (sft).train" in message and "exactly one of `steps` and `epochs`" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = edited("      source: builtin:corpus\n", "      source: corpus.jsonl\n")
    text = edited("      lr: 1.0e-3\n", "      lr: 1.0e-3\n      colour: red\n", text)
    message = recipe_error(tmp_path, text)
    assert "2 problem(s)" in message
    assert f"stages[0] (pretrain).data.source (line {line_of(text, 'corpus.jsonl')})" in message
    assert f"stages[1] (sft).train.colour (line {line_of(text, 'colour')})" in message


def test_error_in_an_earlier_stage_does_not_break_checks_of_later_stages(tmp_path: Path) -> None:
    # stage 0 has a typo; stage 1 (`from: pretrain`) is fine and must not be reported, nor renumbered
    text = edited("      seq_len: 32\n", "      seq_len: 32\n      colour: red\n")
    message = recipe_error(tmp_path, text)
    assert f"stages[0] (pretrain).train.colour (line {line_of(text, 'colour')}): unknown key" in message
    assert "names no earlier stage" not in message
    assert "1 problem(s)" in message
    # a typo inside stage `sft` must not also make a gate on `sft` "name no stage"
    text = edited("      lr: 1.0e-3\n", "      lr: 1.0e-3\n      colour: red\n")
    text += "gates:\n  - metric: arith.accuracy\n    min: 0.0\n    stages: [sft]\n"
    message = recipe_error(tmp_path, text)
    assert "stages[1] (sft).train.colour" in message and "names no stage" not in message


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="broken.yaml: not valid YAML"):
        load_recipe(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(listing)


# --- overrides ------------------------------------------------------------------------------------------


def raw_base() -> dict:
    import yaml

    return yaml.safe_load(BASE)


def test_override_by_stage_name_and_index_with_yaml_types() -> None:
    raw = apply_overrides(
        raw_base(),
        [
            "stages.sft.train.lr=0.5",
            "stages.0.train.steps=7",
            "stages.sft.train.packing=false",
            "stages.sft.data.levels=[1, 2]",
            "evaluations.arith.max_new_tokens=3",
            "name=other",
            "seed=5",
        ],
    )
    assert raw["stages"][1]["train"]["lr"] == 0.5 and isinstance(raw["stages"][1]["train"]["lr"], float)
    assert raw["stages"][0]["train"]["steps"] == 7 and isinstance(raw["stages"][0]["train"]["steps"], int)
    assert raw["stages"][1]["train"]["packing"] is False
    assert raw["stages"][1]["data"]["levels"] == [1, 2]
    assert raw["evaluations"][0]["max_new_tokens"] == 3
    assert raw["name"] == "other" and raw["seed"] == 5


def test_override_in_scientific_notation_is_a_float() -> None:
    # The form the CLI help shows (`--set stages.sft.train.lr=1e-4`); PyYAML's YAML 1.1 rules read `1e-4`
    # (no dot) as a string.
    raw = apply_overrides(raw_base(), ["stages.sft.train.lr=1e-4"])
    assert raw["stages"][1]["train"]["lr"] == pytest.approx(1e-4)
    assert isinstance(raw["stages"][1]["train"]["lr"], float)


def test_recipe_module_doctests() -> None:
    assert doctest.testmod(posttrain.recipe).failed == 0


def test_override_creates_missing_section_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(BASE)
    loaded = load_recipe(path, ["stages.sft.lora.r=4", "stages.sft.train.lr=0.25"])
    assert loaded.recipe.stage("sft").lora.r == 4
    assert loaded.recipe.stage("sft").train.lr == 0.25
    assert loaded.raw["stages"][1]["lora"] == {"r": 4}
    # the file itself is untouched
    assert load_recipe(path).recipe.stage("sft").lora is None


@pytest.mark.parametrize(
    "override, match",
    [
        ("stages.nosuch.train.lr=1", r"no item named 'nosuch'.*\['pretrain', 'sft'\]"),
        ("stages.9.train.lr=1", "no item named '9'"),
        ("stages.sft.train.lr", "not of the form key.sub=value"),
        ("name.first=1", "name is not a section"),
    ],
)
def test_bad_override(override: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        apply_overrides(raw_base(), [override])


def test_override_with_invalid_value_is_reported_like_a_file_error(tmp_path: Path) -> None:
    message = recipe_error(tmp_path, BASE, ["stages.sft.train.lr=fast"])
    assert f"stages[1] (sft).train.lr (line {line_of(BASE, 'lr: 1.0e-3')})" in message
    message = recipe_error(tmp_path, BASE, ["stages.sft.train.momentum=0.9"])
    assert "stages[1] (sft).train.momentum" in message and "unknown key" in message


# --- data paths -----------------------------------------------------------------------------------------


def test_resolve_data_path_relative_to_recipe_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe_dir, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    (recipe_dir / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (recipe_dir / "data" / "a.jsonl").write_text("{}\n")
    (elsewhere / "b.jsonl").write_text("{}\n")
    monkeypatch.chdir(elsewhere)
    assert resolve_data_path("data/a.jsonl", recipe_dir) == recipe_dir / "data" / "a.jsonl"
    # not beside the recipe: the working directory is tried next
    assert resolve_data_path("b.jsonl", recipe_dir) == elsewhere / "b.jsonl"
    # found nowhere: reported against the recipe folder
    assert resolve_data_path("c.jsonl", recipe_dir) == recipe_dir / "c.jsonl"
    assert resolve_data_path(str(tmp_path / "x.jsonl"), recipe_dir) == tmp_path / "x.jsonl"
    assert resolve_data_path("builtin:corpus", recipe_dir) is None
    assert resolve_data_path("hf:org/name", recipe_dir) is None


def test_relative_data_file_beside_recipe_validates_from_another_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_dir = tmp_path / "r"
    recipe_dir.mkdir()
    (recipe_dir / "chat.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    path = recipe_dir / "ok.yaml"
    path.write_text(edited("      source: builtin:arithmetic\n      count: 8\n    train:", "      source: chat.jsonl\n    train:"))
    monkeypatch.chdir(tmp_path)
    assert load_recipe(path).recipe.stage("sft").data.source == "chat.jsonl"


def test_carry_slip_only_on_builtin_arithmetic(tmp_path: Path) -> None:
    text = edited("      source: builtin:corpus\n", "      source: builtin:corpus\n      carry_slip: 0.5\n")
    assert "carry_slip: only `builtin:arithmetic` takes `carry_slip`" in recipe_error(tmp_path, text)
    out_of_range = edited("      source: builtin:arithmetic\n      count: 8\n    train:", "      source: builtin:arithmetic\n      count: 8\n      carry_slip: 1.5\n    train:")
    assert "carry_slip" in recipe_error(tmp_path, out_of_range)


def test_tool_share_only_on_builtin_calculator_and_in_range(tmp_path: Path) -> None:
    text = edited("      source: builtin:corpus\n", "      source: builtin:corpus\n      tool_share: 0.5\n")
    assert "tool_share: only `builtin:calculator` takes `tool_share`" in recipe_error(tmp_path, text)
    sft_data = "      source: builtin:arithmetic\n      count: 8\n    train:"
    calculator = "      source: builtin:calculator\n      count: 8\n      tool_share: {}\n    train:"
    for bad in ("0", "1.5", "half"):
        message = recipe_error(tmp_path, edited(sft_data, calculator.format(bad)))
        assert "stages[1] (sft).data.tool_share" in message, message
    path = tmp_path / "ok.yaml"
    path.write_text(edited(sft_data, calculator.format("0.4")))
    assert load_recipe(path).recipe.stage("sft").data.tool_share == 0.4


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_fp16_is_refused_with_the_reason(stage: str) -> None:
    from pydantic import ValidationError

    from posttrain.config.common import TrainSpec
    from posttrain.config.rl import RLTrainSpec

    spec = TrainSpec if stage == "sft" else RLTrainSpec
    with pytest.raises(ValidationError, match="fp16 training is not offered: it needs a loss scaler"):
        spec(precision="fp16", steps=1)
    assert spec(precision="bf16", steps=1).precision == "bf16"


def test_init_std_is_for_builtin_models_only(tmp_path: Path) -> None:
    message = recipe_error(tmp_path, edited("  name_or_path: builtin:micro\n", "  name_or_path: ./my_model\n  init_std: 0.06\n"))
    assert "model" in message and "init_std" in message and "'./my_model'" in message
    assert load_recipe_text(tmp_path, edited("  name_or_path: builtin:micro\n", "  name_or_path: builtin:micro\n  init_std: 0.06\n")).recipe.model.init_std == 0.06


def load_recipe_text(tmp_path: Path, text: str):
    path = tmp_path / "good.yaml"
    path.write_text(text)
    return load_recipe(path)


@pytest.mark.parametrize("option", ["carry_slip: 0.5", "tool_share: 0.3"])
def test_demonstration_options_where_no_demonstration_is_read(tmp_path: Path, option: str) -> None:
    """carry_slip/tool_share change what SFT imitates; on an evaluation's (or RL stage's) data they would do nothing."""
    source = "builtin:arithmetic" if "carry" in option else "builtin:calculator"
    text = edited("      source: builtin:arithmetic\n      split", f"      source: {source}\n      {option}\n      split")
    message = recipe_error(tmp_path, text)
    assert f"evaluations[0] (arith).data.{option.split(':')[0]}" in message and "SFT stage" in message
