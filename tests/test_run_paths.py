"""Run paths stay inside the run folder: plain names, a checked output folder, no symbolic link followed."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.errors import RecipeError
from posttrain.recipe import load_recipe
from posttrain.run_paths import check_output_dir, check_plain_name, check_run_folder, stage_folder

RECIPE = """\
name: {name}
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
stages:
  - name: {stage}
    kind: sft
    data: {{source: "builtin:arithmetic", count: 8}}
    train: {{steps: 1, batch_size: 2, seq_len: 16}}
"""


@pytest.mark.parametrize("name", ["sft", "SFT_2", "v1.5-rm", "0stage", "a" * 100])
def test_plain_names_pass(name: str) -> None:
    assert check_plain_name(name, "stage name") == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "-flag", "a b", "a\\b", "a\0b", "é", "a" * 101, "x\n"]
)
def test_names_that_are_paths_or_odd_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must be a plain name"):
        check_plain_name(name, "stage name")


@pytest.mark.parametrize("folder", ["/", "/usr", "/etc/", "/tmp", "~", ".", "..", "./", "/usr/../etc"])
def test_unsafe_output_dirs_are_refused(folder: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output_dir .* is (a system folder|the home folder|the working directory)"):
        check_output_dir(folder, cwd=tmp_path)


def test_own_output_dirs_pass(tmp_path: Path) -> None:
    for folder in ("runs/x", str(tmp_path / "run"), "out", None):
        assert check_output_dir(folder, cwd=tmp_path) == folder


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stage": "../../../../escaped_stage"}, "stage name '../../../../escaped_stage' must be a plain name"),
        ({"name": "../evil"}, "run name '../evil' must be a plain name"),
        ({"output_dir": "/"}, "output_dir '/' .* is a system folder"),
    ],
)
def test_validate_reports_unsafe_names_and_output_dirs(tmp_path: Path, fields: dict, message: str) -> None:
    values = {"name": "ok", "stage": "sft", "output_dir": str(tmp_path / "run"), **fields}
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(**values))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_a_non_empty_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="not a posttrain run"):
        check_run_folder(tmp_path)
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    check_run_folder(tmp_path)  # an earlier run: fine
    check_run_folder(tmp_path / "new")  # a new folder: fine


@pytest.mark.parametrize("link", ["stages", "stages/sft", "stages/sft/checkpoint"])
def test_symlinked_stage_folders_are_refused_and_the_target_is_untouched(tmp_path: Path, link: str) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (elsewhere / "checkpoint").mkdir(parents=True)
    (elsewhere / "checkpoint" / "weights").write_text("precious")
    (run / link).parent.mkdir(parents=True, exist_ok=True)
    (run / link).symlink_to(elsewhere if link != "stages" else tmp_path)
    with pytest.raises(RecipeError, match="symbolic link"):
        stage_folder(run, "sft")
    assert (elsewhere / "checkpoint" / "weights").read_text() == "precious"


def test_the_pipeline_reaches_stage_folders_through_the_check(tmp_path: Path) -> None:
    from posttrain.pipeline import Pipeline

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(name="ok", stage="sft", output_dir=tmp_path / "run"))
    pipeline = Pipeline(load_recipe(path), log=lambda _: None)
    (tmp_path / "run" / "stages").mkdir(parents=True)
    (tmp_path / "run" / "stages" / "sft").symlink_to(tmp_path)
    with pytest.raises(RecipeError, match="symbolic link"):
        pipeline.stage_dir("sft")
    with pytest.raises(RecipeError, match="must be a plain name"):
        pipeline.stage_dir("../../escaped")
