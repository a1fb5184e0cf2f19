"""Exact resume after SIGKILL: every stage kind is killed mid-stage in a real process (`kill_harness.py`),
resumed with `posttrain run RECIPE --resume` in a fresh one, and must log the same per-step values and read
the same data rows as a run that was never interrupted.

One recipe holds all five kinds; one chain of processes kills each in turn (each kill lands in the next
stage), so the whole chain costs six process starts:

- sft (LoRA with dropout, so the restored torch generator matters): killed in the middle of writing its step-4 state (files written, marker not): the step-2 state is
  the newest complete one, resume is mid-epoch (8 of 16 rows), the half-written folder is cleaned;
- reward_model: killed right after its step-4 state: an epoch boundary (4 steps x 4 pairs of 16);
- dpo: killed before step 6, after the step-4 state: step 5 is trained twice, its first log row dropped;
- grpo: 2 epochs x 2 mini-batches (4 optimizer steps per generation), killed right after its step-2 state;
- ppo: adaptive KL (a coefficient that moves), killed before step 4 with states at steps 2 and 3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

HARNESS = Path(__file__).with_name("kill_harness.py")

RECIPE = """\
name: crash
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
logging: {{report_to: [], report: false, samples: 0, progress: plain}}
stages:
  - name: sft
    kind: sft
    evaluate: false
    data: {{source: "builtin:arithmetic", count: 16, levels: [1]}}
    train: {{steps: 8, batch_size: 4, seq_len: 32, packing: false, lr: 1.0e-3, log_every: 1, save_every: 2}}
    lora: {{r: 4, alpha: 8, dropout: 0.1}}  # dropout draws from the global torch generator
  - name: rm
    kind: reward_model
    from: base
    evaluate: false
    data: {{source: "builtin:preferences", count: 16, levels: [1]}}
    train: {{steps: 6, batch_size: 4, seq_len: 32, lr: 1.0e-3, log_every: 1, save_every: 2}}
  - name: dpo
    kind: dpo
    from: base
    evaluate: false
    data: {{source: "builtin:preferences", count: 16, levels: [1]}}
    train: {{steps: 6, batch_size: 3, seq_len: 32, lr: 1.0e-3, log_every: 1, save_every: 2}}
  - name: grpo
    kind: grpo
    from: base
    evaluate: false
    data: {{source: "builtin:arithmetic", count: 16, levels: [1]}}
    reward: [{{source: length_penalty, args: {{target_length: 0, max_length: 40}}, allow_truncated: true}}]
    group_size: 4
    generation: {{max_new_tokens: 6}}
    train: {{steps: 4, prompts_per_step: 3, epochs: 2, mini_batches: 2, lr: 1.0e-2, save_every: 2}}
  - name: ppo
    kind: ppo
    from: base
    evaluate: false
    data: {{source: "builtin:arithmetic", count: 16, levels: [1]}}
    reward: [{{source: length_penalty, args: {{target_length: 0, max_length: 40}}, allow_truncated: true}}]
    generation: {{max_new_tokens: 6}}
    kl: {{coef: 0.05, estimator: k1, controller: adaptive, target: 1.0}}
    train: {{steps: 4, prompts_per_step: 4, epochs: 2, lr: 1.0e-2, save_every: 1}}
"""
STAGES = ["sft", "rm", "dpo", "grpo", "ppo"]
# values that measure the machine, not the training
VOLATILE = ("time", "tokens_per_s")


def stage_metrics(run_dir: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "stages" / stage / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in row.items() if k not in VOLATILE and not k.startswith("time/") and not k.endswith("/seconds")}
        for row in rows
    ]


def harness(recipe: Path, rows_log: Path, kill: str | None, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env["POSTTRAIN_TEST_ROWS_LOG"] = str(rows_log)
    env.pop("POSTTRAIN_TEST_KILL", None)
    if kill:
        env["POSTTRAIN_TEST_KILL"] = kill
    return subprocess.run(
        [sys.executable, str(HARNESS), "run", str(recipe), *extra],
        capture_output=True, text=True, timeout=300, env=env, cwd=recipe.parent,
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The recipe run once without interruption (in this process: the same numbers as a subprocess)."""
    folder = tmp_path_factory.mktemp("straight")
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=folder / "run"))
    Pipeline(load_recipe(recipe), log=lambda _: None).run()
    return folder / "run"


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """The recipe killed once in every stage and resumed each time in a fresh process."""
    folder = tmp_path_factory.mktemp("killed")
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(output_dir=folder / "run"))
    rows_log = folder / "rows.jsonl"
    observed: dict = {"run_dir": folder / "run", "rows_log": rows_log, "outputs": []}
    kills = ["sft:saving:4", "rm:saved:4", "dpo:step:5", "grpo:saved:2", "ppo:step:3", None]
    for index, kill in enumerate(kills):
        done = harness(recipe, rows_log, kill, *(["--resume"] if index else []))
        observed["outputs"].append(done.stdout + done.stderr)
        if kill is None:
            assert done.returncode == 0, done.stdout + done.stderr
        else:
            assert done.returncode == -signal.SIGKILL, f"{kill}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        if index == 0:  # right after the kill in the middle of a save
            resume = folder / "run" / "stages" / "sft" / "resume"
            observed["after_save_kill"] = sorted(p.name for p in resume.iterdir())
    return observed


def effective_rows(rows_log: Path) -> tuple[dict[str, list], dict[str, list[int]]]:
    """Per stage, the rows each step read after redone steps replace the ones before them; and the first
    step each process read per stage."""
    per_stage: dict[str, list] = {}
    first_steps: dict[str, list[int]] = {}
    process = None
    seen_in_process: set[str] = set()
    for line in rows_log.read_text().splitlines():
        row = json.loads(line)
        if "process" in row:
            process, seen_in_process = row["process"], set()
            continue
        stage, step = row["stage"], row["step"]
        steps = per_stage.setdefault(stage, [])
        if stage not in seen_in_process:
            first_steps.setdefault(stage, []).append(step)
            seen_in_process.add(stage)
        del steps[step:]
        assert len(steps) == step, f"{stage}: step {step} read with steps missing before it (process {process})"
        steps.append(row["rows"])
    return per_stage, first_steps


def test_a_save_killed_midway_leaves_the_previous_state_newest(chain) -> None:
    assert chain["after_save_kill"] == ["step-00000002", "step-00000004.tmp"]
    assert "removed a half-written checkpoint" in chain["outputs"][1]
    assert "[sft] resuming from step 2" in chain["outputs"][1]


@pytest.mark.parametrize("stage", STAGES)
def test_resumed_stage_logs_the_same_values_as_an_uninterrupted_run(chain, straight, stage) -> None:
    expected = stage_metrics(straight, stage)
    assert expected and all("loss" in row for row in expected)
    assert stage_metrics(chain["run_dir"], stage) == expected


def test_resumed_stages_read_the_same_rows_and_restart_at_their_saved_step(chain, straight) -> None:
    from posttrain.training.schedule import step_rows

    per_stage, first_steps = effective_rows(chain["rows_log"])
    # (steps, rows or prompts, rows per step) as configured above; a step's rows are the straight run's
    shapes = {"sft": (8, 16, 4), "rm": (6, 16, 4), "dpo": (6, 16, 3), "grpo": (4, 16, 3), "ppo": (4, 16, 4)}
    for stage, (steps, count, per_step) in shapes.items():
        assert per_stage[stage] == [step_rows(count, step, per_step, 0) for step in range(steps)], stage
    # the process killed in a stage read it from step 0; the next one from the step it had saved
    assert first_steps == {"sft": [0, 2], "rm": [0, 4], "dpo": [0, 4], "grpo": [0, 2], "ppo": [0, 3]}
    # rm resumed exactly at an epoch boundary, sft mid-epoch
    assert sorted(sum(per_stage["rm"][:4], [])) == list(range(16))
    assert len(set(sum(per_stage["sft"][:2], []))) == 8


def test_finished_stages_keep_no_training_state_and_no_half_written_folders(chain) -> None:
    for stage in STAGES:
        folder = chain["run_dir"] / "stages" / stage
        assert (folder / "manifest.json").is_file()
        assert not (folder / "resume").exists()
        assert not [p for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name]
