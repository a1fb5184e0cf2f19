"""`--resume` inside the pipeline: the saved training state is used only with the settings it was made
with (else refused, naming the change, or started afresh on request), a run without `--resume` starts
afresh, and an output folder that cannot be written is reported before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import posttrain.training.loop as loop
from posttrain.errors import CheckpointError
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

RECIPE = """\
name: resume
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
logging: {{report_to: [], report: false, samples: 0}}
stages:
  - name: sft
    kind: sft
    evaluate: false
    data: {{source: "builtin:arithmetic", count: 16, levels: [1]}}
    train: {{steps: 4, batch_size: 4, seq_len: 32, lr: 1.0e-3, log_every: 1, save_every: 2}}
"""


class Crash(Exception):
    pass


def crashed_run(folder: Path, monkeypatch) -> Path:
    """The recipe run until step 3 fails (training state saved at step 2); returns the recipe path."""
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=folder / "run"))
    original = loop.step_rows

    def fail_at_step_three(num_rows, step, global_batch, seed):
        if step == 2:
            raise Crash()
        return original(num_rows, step, global_batch, seed)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "step_rows", fail_at_step_three)
        with pytest.raises(Crash):
            Pipeline(load_recipe(recipe), log=lambda _: None).run()
    assert (folder / "run" / "stages" / "sft" / "resume" / "step-00000002").is_dir()
    return recipe


def run(recipe: Path, *overrides: str, **flags) -> list[str]:
    lines: list[str] = []
    Pipeline(load_recipe(recipe, list(overrides)), log=lines.append, **flags).run()
    return lines


def logged_steps(recipe: Path) -> list[int]:
    path = recipe.parent / "run" / "stages" / "sft" / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_with_a_changed_config_is_refused_naming_the_change(tmp_path: Path, monkeypatch) -> None:
    recipe = crashed_run(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError, match=r"(?s)config train.lr: 0.001 -> 0.002.*--restart-changed"):
        run(recipe, "stages.sft.train.lr=2.0e-3", resume=True)
    # nothing was touched: the unchanged recipe still resumes from step 2
    lines = run(recipe, resume=True)
    assert any("resuming from step 2" in line for line in lines)
    assert logged_steps(recipe) == [1, 2, 3, 4]


def test_restart_changed_starts_the_stage_afresh(tmp_path: Path, monkeypatch) -> None:
    recipe = crashed_run(tmp_path, monkeypatch)
    lines = run(recipe, "stages.sft.train.lr=2.0e-3", resume=True, restart_changed=True)
    assert any("starting afresh" in line and "other settings" in line for line in lines)
    assert not any("resuming" in line for line in lines)
    assert logged_steps(recipe) == [1, 2, 3, 4]


def test_how_often_state_is_saved_is_not_a_change(tmp_path: Path, monkeypatch) -> None:
    recipe = crashed_run(tmp_path, monkeypatch)
    lines = run(recipe, "stages.sft.train.save_every=1", "stages.sft.train.keep_last=3", resume=True)
    assert any("resuming from step 2" in line for line in lines)


def test_without_resume_the_stage_starts_afresh(tmp_path: Path, monkeypatch) -> None:
    recipe = crashed_run(tmp_path, monkeypatch)
    lines = run(recipe)
    assert any("starting afresh" in line and "--resume was not given" in line for line in lines)
    assert logged_steps(recipe) == [1, 2, 3, 4]


def test_an_output_folder_that_cannot_be_created_is_reported_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=blocker / "run"))
    lines: list[str] = []
    with pytest.raises(PermissionError, match=r"output folder .*a-file/run is not writable"):
        Pipeline(load_recipe(recipe), log=lines.append).run()
    assert not any("running" in line for line in lines)


def test_a_stage_folder_that_cannot_be_written_is_reported_before_training(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=tmp_path / "run"))
    (tmp_path / "run" / "stages").mkdir(parents=True)
    (tmp_path / "run" / "stages" / "sft").write_text("a file where the stage folder goes")
    lines: list[str] = []
    with pytest.raises(PermissionError, match=r"output folder .*stages/sft is not writable"):
        Pipeline(load_recipe(recipe), log=lines.append).run()
    assert not any("running" in line for line in lines)
