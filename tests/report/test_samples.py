"""Sample generations at evaluation time: kept while model and settings are unchanged, regenerated
(without re-running evaluations) when the sample settings change, from the recipe's prompts when given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import posttrain.eval.evaluators
import posttrain.models.checkpoint
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

STAGES = ("base", "pretrain", "sft")


@pytest.fixture
def copied_run(cli_micro_run, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(cli_micro_run.run_dir, run_dir)
    return run_dir


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts model loads; evaluations must not run (they are stored and unchanged in these tests)."""
    loaded: list[str] = []
    original = posttrain.models.checkpoint.load_model_and_tokenizer

    def load(spec, path=None, device="cpu"):
        loaded.append(str(path))
        return original(spec, path, device)

    def no_evaluation(kind):
        raise AssertionError("an evaluation ran although its model and config did not change")

    monkeypatch.setattr(posttrain.models.checkpoint, "load_model_and_tokenizer", load)
    monkeypatch.setattr(posttrain.eval.evaluators, "evaluator", no_evaluation)
    return loaded


def rerun(cli_micro_run, run_dir: Path, accelerator, *overrides: str) -> None:
    loaded = load_recipe(cli_micro_run.recipe, [f"output_dir={run_dir}", "logging.report_to=[]", *overrides])
    Pipeline(loaded, accelerator=accelerator, log=lambda line: None).run()


def samples(run_dir: Path, stage: str) -> list[dict]:
    return json.loads((run_dir / "stages" / stage / "samples.json").read_text())["samples"]


def test_unchanged_samples_are_kept_without_loading_a_model(cli_micro_run, copied_run, accelerator, loads) -> None:
    before = {stage: (copied_run / "stages" / stage / "samples.json").read_bytes() for stage in STAGES}
    rerun(cli_micro_run, copied_run, accelerator)
    assert loads == []
    assert {stage: (copied_run / "stages" / stage / "samples.json").read_bytes() for stage in STAGES} == before


def test_changed_sample_settings_regenerate_only_the_samples(cli_micro_run, copied_run, accelerator, loads) -> None:
    evaluations = (copied_run / "evaluations.json").read_text()
    first = samples(copied_run, "sft")
    rerun(cli_micro_run, copied_run, accelerator, "logging.samples=2")
    assert len(loads) == 3  # one load per evaluated model: base, pretrain, sft
    assert samples(copied_run, "sft") == first[:2]  # greedy: the same completions for the same prompts
    assert json.loads((copied_run / "evaluations.json").read_text()) == json.loads(evaluations)


def test_recipe_prompts_are_sampled_when_given(cli_micro_run, copied_run, accelerator, loads) -> None:
    rerun(cli_micro_run, copied_run, accelerator, "logging.sample_prompts=['What is 2 + 2?', 'Say hi']", "logging.sample_max_new_tokens=3")
    for stage in STAGES:
        stored = samples(copied_run, stage)
        assert [s["prompt"] for s in stored] == ["What is 2 + 2?", "Say hi"]
        assert all("answer" not in s and isinstance(s["completion"], str) for s in stored)


def test_samples_can_be_turned_off(cli_micro_run, copied_run, accelerator, loads) -> None:
    for stage in STAGES:
        (copied_run / "stages" / stage / "samples.json").unlink()
    rerun(cli_micro_run, copied_run, accelerator, "logging.samples=0")
    assert loads == [] and not list(copied_run.glob("stages/*/samples.json"))
