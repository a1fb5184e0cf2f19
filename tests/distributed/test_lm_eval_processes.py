"""`kind: lm_eval` under `accelerate launch` with 2 CPU processes: main-process-only evaluation.

The pipeline evaluates on the main process while the other waits for its metrics (a broadcast, under the
process group's timeout, 30 min by default); lm-eval runs there alone (HFLM given a loaded model is
single-process). So the table holds what lm-eval gives that checkpoint in one process, over all `limit`
documents (not a share per process), and both processes apply the gates to it and stop together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.config.common import ModelSpec
from posttrain.config.evaluation import EvalConfig
from posttrain.eval import evaluator
from posttrain.models.checkpoint import load_model_and_tokenizer

pytestmark = pytest.mark.distributed
pytest.importorskip("lm_eval", reason="the lm_eval extra (part of dev) is not installed")

REPO = Path(__file__).resolve().parents[2]
METRIC = "harness.posttrain_arithmetic.exact_match,last_number"
RECIPE = """\
name: harness2
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
logging: {{report_to: [], report: false, samples: 0}}
stages:
  - name: sft
    kind: sft
    data: {{source: "builtin:arithmetic", count: 32, levels: [1]}}
    train: {{steps: 2, batch_size: 4, seq_len: 32, lr: 1.0e-3, log_every: 1}}
evaluations:
  - {{name: harness, kind: lm_eval, tasks: [posttrain_arithmetic], limit: 5, batch_size: 2}}
gates:
  - {{metric: "{metric}", min: {minimum}}}
"""


def launch(folder: Path, minimum: float) -> subprocess.CompletedProcess:
    recipe = folder / f"recipe_{minimum}.yaml"
    recipe.write_text(RECIPE.format(output_dir=folder / "run", metric=METRIC, minimum=minimum))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / "ddp.yaml"), "-m", "posttrain.run", str(recipe)]
    return subprocess.run(command, capture_output=True, text=True, timeout=420, env=env, cwd=folder)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm_eval_two")
    done = launch(folder, minimum=0.0)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return folder


def test_table_is_one_process_lm_eval_of_each_checkpoint(two_process_run: Path) -> None:
    table = json.loads((two_process_run / "run" / "evaluations.json").read_text())
    assert [row["stage"] for row in table] == ["base", "sft"]
    config = EvalConfig(name="harness", kind="lm_eval", tasks=["posttrain_arithmetic"], limit=5, batch_size=2)
    model, tokenizer = load_model_and_tokenizer(ModelSpec(name_or_path="builtin:micro"),
                                                two_process_run / "run" / "stages" / "sft" / "checkpoint")
    here = evaluator("lm_eval")(model, tokenizer, [], config)
    sft = table[1]
    assert sft["harness.posttrain_arithmetic.n"] == 5.0  # every document, not a share per process
    assert {k.removeprefix("harness."): v for k, v in sft.items() if k.startswith("harness.")} == dict(here)


def test_both_processes_stop_on_a_failed_harness_gate(two_process_run: Path) -> None:
    done = launch(two_process_run, minimum=1.5)  # stages and evaluations reused: only the gate differs
    assert done.returncode != 0
    output = done.stdout + done.stderr
    for rank in (0, 1):
        assert f"[rank {rank}] error: gate failed after stage 'sft': {METRIC}" in output, output[-4000:]
