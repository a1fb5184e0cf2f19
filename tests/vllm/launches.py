"""A GRPO run of the micro model launched as 2 CPU processes and run as 1, for the vLLM tests that check a
launch samples what one process samples (`test_vllm_rollouts`, `test_vllm_server`)."""

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


def two_processes_and_one(tmp_path: Path, accelerator: Any, generation: str) -> tuple[list[dict], list[dict]]:
    """The stage's metric rows of ``accelerate launch`` with 2 CPU processes (DDP over gloo, 2 prompts each
    per step) and of 1 process (4 prompts per step), with the flow-style YAML ``generation`` settings."""
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import load_recipe

    repo = Path(__file__).resolve().parents[2]
    for run, prompts in (("two", 2), ("one", 4)):
        (tmp_path / f"{run}.yaml").write_text(RECIPE.replace("GENERATION", generation).replace("PROMPTS", str(prompts)))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "recipes" / "accelerate" / "ddp.yaml"),
        "-m", "posttrain.run", str(tmp_path / "two.yaml"), "--output-dir", str(tmp_path / "two"),
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    Pipeline(load_recipe(tmp_path / "one.yaml", [f"output_dir={tmp_path / 'one'}"]), accelerator=accelerator, log=lambda _: None).run()

    def rows(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "stages" / "grpo" / "metrics.jsonl").read_text().splitlines()]

    return rows("two"), rows("one")
