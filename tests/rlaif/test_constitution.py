"""Constitution files: parsing, templates, and errors that name the principle or template at fault."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from posttrain.data.rlaif_demonstrations import ARITHMETIC_CONSTITUTION, arithmetic_constitution
from posttrain.data.constitution import ConstitutionError, load_constitution, parse_constitution

REPO = Path(__file__).resolve().parents[2]
PRINCIPLE = {"name": "short", "critique_request": "Too long?", "revision_request": "Shorten it."}


def error_of(raw, base_dir: Path | None = None) -> str:
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(raw, "c.yaml", base_dir)
    return str(info.value)


def test_shipped_constitution_is_the_built_in_one() -> None:
    shipped = load_constitution(REPO / "recipes" / "constitutions" / "arithmetic.yaml")
    assert shipped.principles == arithmetic_constitution().principles
    assert shipped.templates == arithmetic_constitution().templates


def test_templates_render_requests_prompt_and_response() -> None:
    constitution = arithmetic_constitution()
    principle = constitution.principle("answer_format")
    text = constitution.critique_prompt(principle, "What is 2 + 3?", "5 {not a field}")
    assert text == "Does the response end with Answer: N?\nQuestion: What is 2 + 3?\nResponse: 5 {not a field}"
    judge = constitution.judge_prompt(principle, "Q", "x", "y")
    assert judge.endswith("A: x\nB: y") and principle.judge_request in judge


def test_judge_request_defaults_to_the_critique_request() -> None:
    constitution = parse_constitution({"principles": [PRINCIPLE]})
    assert constitution.principles[0].judge_request == "Too long?"


@pytest.mark.parametrize("missing", ["critique_request", "revision_request"])
def test_principle_missing_a_request_is_named(missing: str) -> None:
    principle = {k: v for k, v in PRINCIPLE.items() if k != missing}
    message = error_of({"principles": [principle]})
    assert f"principle 'short': missing `{missing}`" in message


def test_template_missing_response_placeholder_is_named(tmp_path: Path) -> None:
    (tmp_path / "critique.txt").write_text("{critique_request}\nQuestion: {prompt}\n")
    message = error_of({"templates": {"critique": "critique.txt"}, "principles": [PRINCIPLE]}, tmp_path)
    assert "template 'critique' lacks the placeholder(s) {response}" in message


def test_unknown_placeholder_and_unbalanced_brace() -> None:
    raw = {"templates": {"judge": {"text": "{judge_request} {response_a} {response_b} {score}"},
                         "revision": {"text": "{revision_request} {response} {critique"}},
           "principles": [PRINCIPLE]}
    message = error_of(raw)
    assert "template 'judge' has unknown placeholder(s) {score}" in message
    assert "template 'revision':" in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    raw = {"templates": {"critique": "nowhere.txt", "summary": "x.txt"},
           "principles": [{"name": "a", "critique_request": "?"}, {"name": "b", "critique_request": "?",
                          "revision_request": "!", "check": "no_such_check"}, PRINCIPLE, PRINCIPLE]}
    message = error_of(raw, tmp_path)
    for expected in ("template 'critique': file not found", "template 'summary': unknown template",
                     "principle 'a': missing `revision_request`", "principle 'b': unknown check 'no_such_check'",
                     "principle name(s) used twice: ['short']", "5 problem(s)" if False else "problem(s)"):
        assert expected in message


def test_bad_check_arguments_are_an_error() -> None:
    message = error_of({"principles": [{**PRINCIPLE, "check": "max_words", "check_args": {"limt": 3}}]})
    assert "principle 'short': bad `check_args` for check 'max_words'" in message


def test_sampling_follows_weights() -> None:
    constitution = parse_constitution({"principles": [{**PRINCIPLE, "weight": 9.0},
                                                      {**PRINCIPLE, "name": "rare", "weight": 1.0}]})
    rng = random.Random(0)
    drawn = [constitution.sample(rng).name for _ in range(2000)]
    assert 0.85 < drawn.count("short") / len(drawn) < 0.95


def test_recipe_validation_reports_a_bad_constitution_before_running(tmp_path: Path, write_recipe) -> None:
    from posttrain.errors import RecipeError
    from posttrain.recipe import load_recipe

    bad = yaml.safe_load(yaml.safe_dump(ARITHMETIC_CONSTITUTION))
    del bad["principles"][1]["revision_request"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(bad))
    recipe = write_recipe(tmp_path, """\
        name: r
        stages:
          - name: critique
            kind: constitutional
            constitution: c.yaml
            data: {source: "builtin:arithmetic"}
    """)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert "stages[0] (critique).constitution" in str(info.value)
    assert "principle 'no_filler': missing `revision_request`" in str(info.value)


def test_principle_check_doctests() -> None:
    import doctest

    import posttrain.data.principle_checks

    result = doctest.testmod(posttrain.data.principle_checks)
    assert result.attempted > 0 and result.failed == 0
