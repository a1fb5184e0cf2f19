"""Whole runs the vLLM tests compare, for the colocated engine (`test_vllm_rollouts`) and a server
(`test_vllm_server`) alike: a GRPO run of the micro model launched as 2 CPU processes and run as 1, and a
run resumed from its saved training state; and the weight-sync check both run on one engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RECIPE = """\
name: mpvllm
seed: 0
model: {name_or_path: "builtin:micro"}
evaluate_base: false
logging: {report_to: [], report: false, samples: 0}
stages:
  - name: grpo
    kind: grpo
    data: {source: "builtin:arithmetic", count: 32, levels: [1]}
    reward:
      - {source: length_penalty, args: {target_length: 6, max_length: 12}}
    group_size: 4
    generation: GENERATION
    train: {steps: 2, prompts_per_step: PROMPTS, lr: 1.0e-3, log_every: 1}
    evaluate: false
"""


def two_processes_and_one(
    tmp_path: Path, accelerator: Any, generation: str, config: str = "ddp.yaml"
) -> tuple[list[dict], list[dict]]:
    """The stage's metric rows of ``accelerate launch`` with 2 CPU processes (recipes/accelerate/``config``:
    DDP over gloo, or ZeRO-3; 2 prompts each per step) and of 1 process (4 prompts per step), with the
    flow-style YAML ``generation`` settings."""
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import load_recipe

    repo = Path(__file__).resolve().parents[2]
    for run, prompts in (("two", 2), ("one", 4)):
        (tmp_path / f"{run}.yaml").write_text(RECIPE.replace("GENERATION", generation).replace("PROMPTS", str(prompts)))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "recipes" / "accelerate" / config),
        "-m", "posttrain.run", str(tmp_path / "two.yaml"), "--output-dir", str(tmp_path / "two"),
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    Pipeline(load_recipe(tmp_path / "one.yaml", [f"output_dir={tmp_path / 'one'}"]), accelerator=accelerator, log=lambda _: None).run()

    def rows(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "stages" / "grpo" / "metrics.jsonl").read_text().splitlines()]

    return rows("two"), rows("one")


def resumed_run_row(make_stage: Any, tmp_path: Path, accelerator: Any, generation: dict) -> dict:
    """The metric row of step 3 of a 3-step GRPO stage resumed from its state saved after step 2.

    The resumed stage loads the micro model's initial weights, then its training state; lr 1e-2 moves every
    weight, so a rollout engine holding weights from before the restore would be far from the trainer.
    """
    from tests.rl.conftest import rl_config

    from posttrain.training.state import TrainCheckpoints

    def stage(run: str, resume_from: Path | None) -> Any:
        built = make_stage(rl_config("grpo", generation=generation, train={"steps": 3, "save_every": 2}))
        built.context.checkpoints = TrainCheckpoints(tmp_path / run, 2, 1, {}, accelerator, resume_from)
        return built

    stage("first", None).train()  # saves its state after step 2
    resumed = stage("resumed", tmp_path / "first" / "step-00000002")
    resumed.train()
    [row] = resumed.metrics.rows
    assert row["step"] == 3
    return row


def check_sync_then_stale(engine: Any, synced_below: float = 1e-4) -> dict:
    """Step 0 samples and updates (lr 1e-2 moves every weight); step 1's rollout comes after the weights reached
    the vLLM side, so the trainer's recomputed log-probs of those completions equal vLLM's to float32 rounding
    (``synced_below``: a looser bound for an engine in another precision). Without the sync (control: step 1's
    update never reaches vLLM) step 2's are far apart. Returns the rows of steps 1 and 2."""
    try:
        engine.step(0)
        engine.sampler.weights_changed = lambda: None  # control from here: step 1's update is not synced
        synced = engine.step(1)
        assert engine.sampler.syncs == 2
        assert synced["rollout/logprob_diff_max"] < synced_below, synced["rollout/logprob_diff_max"]
        stale = engine.step(2)
        assert stale["rollout/logprob_diff_max"] > max(0.05, 4 * synced_below), stale["rollout/logprob_diff_max"]
        return {"synced": synced, "stale": stale}
    finally:
        engine.sampler.close()
