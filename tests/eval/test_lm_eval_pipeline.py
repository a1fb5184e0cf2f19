"""`kind: lm_eval` inside a run (table, gates, provenance in eval.json, reuse) and from `posttrain eval`."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest

import posttrain.eval.evaluators
import posttrain.models.checkpoint
from posttrain.cli import main
from posttrain.errors import GateFailed
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

pytest.importorskip("lm_eval", reason="the lm_eval extra (part of dev) is not installed")

METRIC = "harness.posttrain_arithmetic.exact_match,last_number"
RECIPE = """\
name: harness
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
logging: {{report_to: [], report: false, samples: 0}}
stages:
  - name: sft
    kind: sft
    data: {{source: "builtin:arithmetic", count: 16, levels: [1]}}
    train: {{steps: 2, batch_size: 4, seq_len: 32, lr: 1.0e-3, log_every: 1}}
evaluations:
  - {{name: harness, kind: lm_eval, tasks: [posttrain_arithmetic], limit: 3, batch_size: 4}}
gates:
  - {{metric: "{metric}", min: {minimum}}}
"""


def run_recipe(folder: Path, accelerator, minimum: float = 0.0) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=folder / "run", metric=METRIC, minimum=minimum))
    return Pipeline(load_recipe(recipe), accelerator=accelerator, log=lambda line: None).run()


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory, accelerator) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("harness")
    return folder, run_recipe(folder, accelerator)


def test_run_tables_gates_and_records_harness_metrics(harness_run) -> None:
    folder, table = harness_run
    assert [row["stage"] for row in table] == ["base", "sft"]
    for row in table:
        assert 0.0 <= row[METRIC] <= 1.0
        assert row["harness.posttrain_arithmetic.n"] == 3.0 and row["harness.chat_template"] == 1.0
    assert json.loads((folder / "run" / "evaluations.json").read_text()) == table
    record = json.loads((folder / "run" / "stages" / "sft" / "eval.json").read_text())
    provenance = record["provenance"]["harness"]
    assert provenance["lm_eval_version"] == importlib.metadata.version("lm_eval")
    assert provenance["generation"]["posttrain_arithmetic"]["max_gen_toks"] == 16
    assert provenance["num_fewshot"] == {"posttrain_arithmetic": 0}
    assert provenance["chat_template"] is True and provenance["backend"] == "hf"
    manifest = json.loads((folder / "run" / "stages" / "sft" / "manifest.json").read_text())
    assert manifest["evaluation"] == {"key": record["key"], "provenance": record["provenance"]}  # in the manifest too


def test_unchanged_run_reuses_harness_results(harness_run, tmp_path: Path, accelerator, monkeypatch) -> None:
    folder, table = harness_run
    shutil.copytree(folder / "run", tmp_path / "run")

    def no_evaluation(kind):
        raise AssertionError("lm-eval ran again on an unchanged checkpoint")

    monkeypatch.setattr(posttrain.eval.evaluators, "evaluator", no_evaluation)
    assert run_recipe(tmp_path, accelerator) == table


def test_another_lm_eval_version_reruns_harness_results(harness_run, tmp_path: Path, accelerator, monkeypatch) -> None:
    """The cache key holds the installed lm-eval version (posttrain.eval.cache_key): stored results of another
    version are not reused, though checkpoint and recipe are unchanged."""
    import posttrain.eval.cache_key as cache_key

    folder, _ = harness_run
    shutil.copytree(folder / "run", tmp_path / "run")
    real = cache_key._version
    monkeypatch.setattr(cache_key, "_version", lambda *names: "0.4.99" if names[0] == "lm_eval" else real(*names))

    def ran_again(kind):
        raise RuntimeError(f"{kind} ran again")

    monkeypatch.setattr(posttrain.eval.evaluators, "evaluator", ran_again)
    with pytest.raises(RuntimeError, match="lm_eval ran again"):
        run_recipe(tmp_path, accelerator)


def test_gate_on_a_harness_metric_stops_the_run(harness_run, tmp_path: Path, accelerator) -> None:
    folder, _ = harness_run
    shutil.copytree(folder / "run", tmp_path / "run")
    with pytest.raises(GateFailed, match=f"gate failed after stage 'sft': {METRIC} = .* < min 1.5"):
        run_recipe(tmp_path, accelerator, minimum=1.5)


def test_cli_evaluates_a_checkpoint_on_lm_eval_tasks(capsys) -> None:
    assert main(["eval", "builtin:micro", "--lm-eval-tasks", "posttrain_arithmetic", "--limit", "2", "--no-chat-template"]) == 0
    metrics, provenance = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert metrics["posttrain_arithmetic.n"] == 2.0 and metrics["chat_template"] == 0.0
    assert provenance["provenance"]["chat_template"] is False


def test_cli_rejects_an_unknown_task_before_loading_the_model(capsys, monkeypatch) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for an unknown task")

    monkeypatch.setattr(posttrain.models.checkpoint, "load_model_and_tokenizer", no_load)
    assert main(["eval", "builtin:micro", "--lm-eval-tasks", "gsm8kk"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: unknown lm-eval task(s): 'gsm8kk' (close: gsm8k") and "\n" not in error


def test_validate_reports_a_misspelt_task_with_its_line(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=tmp_path / "run", metric=METRIC, minimum=0).replace(
        "tasks: [posttrain_arithmetic]", "tasks: [posttrain_arithmetc]"))
    assert main(["validate", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "evaluations[0] (harness) (line 12)" in error  # the recipe line of the evaluation
    assert "unknown lm-eval task(s): 'posttrain_arithmetc' (close: posttrain_arithmetic" in error
