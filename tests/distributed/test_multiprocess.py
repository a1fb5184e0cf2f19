"""Two processes on a CPU (gloo) give what one process gives: DDP, ZeRO-2 and ZeRO-3, SFT and GRPO.

Launches are the slow part (~15 s of start-up each), so one launch runs the same recipe under ZeRO-3 (from
`recipes/accelerate/zero3.yaml`, the way a user launches), DDP and ZeRO-2, and the tests below read its
outputs; it also checks one ZeRO-2 and one ZeRO-3 optimizer step against plain torch. The 1-process
references run in this process.

Tolerances: 2 processes sum the loss and the gradients in another order than 1 process, so trajectories
agree to a relative 1e-4, not bit for bit (measured on 2026-11-24: at most 1.5e-7 for DDP SFT, 1.4e-6 for
ZeRO SFT, 2.4e-6 for GRPO). Saved checkpoints give the logits the training processes computed to 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
PROBE_TOKENS = [[5, 17, 33, 2, 9, 40, 11, 3]]  # the worker's
LAUNCH_TIMEOUT_S = 420
RELATIVE = 1e-4

# SFT then GRPO on the micro model. `{sft_batch}` / `{grad_accum}` / `{prompts}` are per process: 2
# processes x 4 rows (2 prompts) against 1 process x 8 rows (4 prompts) is the same global batch. The grad
# norm is clipped (0.5) at every step, so clipping must agree too.
RECIPE = """\
name: dist
seed: 0
model: {{name_or_path: "builtin:micro"}}
evaluate_base: false
logging: {{report_to: [], report: false, samples: 0}}
stages:
  - name: sft
    kind: sft
    data: {{source: "builtin:arithmetic", count: 64, levels: [1]}}
    train: {{steps: 3, batch_size: {sft_batch}, grad_accum: {grad_accum}, seq_len: 32, lr: 3.0e-3, log_every: 1, max_grad_norm: 0.5}}
  - name: grpo
    kind: grpo
    data: {{source: "builtin:arithmetic", count: 32, levels: [1]}}
    reward:
      - {{source: length_penalty, args: {{target_length: 6, max_length: 12}}}}
    group_size: 4
    kl: {{coef: 0.05, estimator: k3}}
    generation: {{max_new_tokens: 6, temperature: 1.0}}
    train: {{steps: 2, prompts_per_step: {prompts}, lr: 1.0e-3, log_every: 1}}
"""


def launch_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def accelerate_launch(config: str, args: list[str], cwd: Path, timeout: int = LAUNCH_TIMEOUT_S) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes" / "accelerate" / config)]
    started = time.perf_counter()
    done = subprocess.run(command + args, capture_output=True, text=True, timeout=timeout, env=launch_env(), cwd=cwd)
    return done, time.perf_counter() - started


def metrics(run_dir: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stages" / stage / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """``OUT/{auto,ddp,zero2}``: the recipe with 2 processes (``auto`` = ZeRO-3 from zero3.yaml)."""
    folder = tmp_path_factory.mktemp("two_processes")
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(sft_batch=4, grad_accum=1, prompts=2))
    # DDP: 2 processes x batch 4; ZeRO: 2 processes x batch 2 x 2 accumulation steps, gradient checkpointing
    zero_sft = ["stages.sft.train.batch_size=2", "stages.sft.train.grad_accum=2", "stages.sft.train.gradient_checkpointing=true"]
    zero_set = [arg for override in zero_sft for arg in ("--zero-set", override)]
    done, seconds = accelerate_launch(
        "zero3.yaml", [str(WORKER), str(folder / "out"), str(recipe), "auto", "ddp", "zero2", *zero_set, "--check-zero-arithmetic"], folder
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    print(f"2-process launch (ZeRO-3, DDP, ZeRO-2): {seconds:.1f}s")
    assert "worker: mode auto rank 1: ('ZeroAccelerator', 3, 2)" in done.stdout  # zero3.yaml was honoured
    return folder / "out"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, accelerator) -> dict[str, Path]:
    """The same recipe in this process: batch 8 x 1 step of accumulation, and batch 4 x 2."""
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import load_recipe

    folder = tmp_path_factory.mktemp("one_process")
    runs = {}
    for name, (batch, accumulation) in {"8x1": (8, 1), "4x2": (4, 2)}.items():
        recipe = folder / f"{name}.yaml"
        recipe.write_text(RECIPE.format(sft_batch=batch, grad_accum=accumulation, prompts=4))
        runs[name] = folder / name
        Pipeline(load_recipe(recipe, [f"output_dir={runs[name]}"]), accelerator=accelerator, log=lambda _: None).run()
    return runs


def assert_same_trajectory(observed: list[dict], expected: list[dict], keys: list[str]) -> None:
    assert [row["step"] for row in observed] == [row["step"] for row in expected]  # one writer: no duplicates
    for got, want in zip(observed, expected):
        for key in keys:
            assert got[key] == pytest.approx(want[key], rel=RELATIVE, abs=1e-6), (key, got["step"], got[key], want[key])


@pytest.mark.parametrize("mode", ["ddp", "zero2", "auto"])
def test_sft_trajectory_with_two_processes_equals_one(two_processes, one_process, mode):
    """DDP with batch 4 per process; ZeRO-2/3 with batch 2 x 2 accumulation steps per process and
    gradient checkpointing: all the same global batch of 8 as 1 process with batch 8."""
    reference = metrics(one_process["8x1"], "sft")
    assert len(reference) == 3
    assert_same_trajectory(metrics(two_processes / mode, "sft"), reference, ["loss", "grad_norm", "loss_tokens"])


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_step_is_plain_torch_step_on_the_whole_batch(two_processes, stage):
    """Accumulation over micro-batches, averaging over processes and clipping under ZeRO, seen through an
    SGD step (Adam's updates hardly change when every gradient is scaled, so a trajectory would not show a
    clipping error)."""
    result = json.loads((two_processes / "zero_arithmetic.json").read_text())[stage]
    assert result["reference_norm"] > 10 * 0.05  # clipping is active
    assert result["norm"] == pytest.approx(result["reference_norm"], rel=1e-5)
    assert result["max_parameter_difference"] < 1e-6


def test_batch_8x1_equals_4x2_equals_two_processes_of_4(two_processes, one_process):
    whole, accumulated, split = (
        metrics(one_process["8x1"], "sft"), metrics(one_process["4x2"], "sft"), metrics(two_processes / "ddp", "sft")
    )
    assert_same_trajectory(accumulated, whole, ["loss", "grad_norm", "loss_tokens"])
    assert_same_trajectory(split, whole, ["loss", "grad_norm", "loss_tokens"])
    assert all(row["grad_norm"] > 0.5 for row in whole)  # clipping was active at every step


@pytest.mark.parametrize("mode", ["ddp", "zero2", "auto"])
def test_grpo_trajectory_with_two_processes_equals_one(two_processes, one_process, mode):
    reference = metrics(one_process["8x1"], "grpo")
    observed = metrics(two_processes / mode, "grpo")
    keys = ["loss", "grad_norm", "reward/total/mean", "reward/total/std", "response_length", "kl", "completion_tokens"]
    assert_same_trajectory(observed, reference, keys)
    assert any(abs(row["loss"]) > 1e-4 for row in reference)  # a trajectory that says something


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_zero3_checkpoint_loads_in_one_plain_process_with_the_same_logits(two_processes, stage):
    from transformers import AutoModelForCausalLM

    run = two_processes / "auto"
    model = AutoModelForCausalLM.from_pretrained(run / "stages" / stage / "checkpoint").eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(PROBE_TOKENS)).logits
    sharded = torch.load(run / f"{stage}.logits.pt")
    assert logits.shape == sharded.shape
    assert torch.allclose(logits, sharded, atol=1e-5, rtol=0)
    # and it is the model 1 process trains: not the starting weights
    start = AutoModelForCausalLM.from_pretrained(two_processes / "ddp" / "stages" / "sft" / "checkpoint") if stage == "grpo" else None
    if start is not None:
        with torch.no_grad():
            assert not torch.allclose(start(input_ids=torch.tensor(PROBE_TOKENS)).logits, logits, atol=1e-4)


def test_a_killed_rank_fails_the_launch_quickly_and_names_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(sft_batch=4, grad_accum=1, prompts=2))
    done, seconds = accelerate_launch(
        "zero2.yaml", [str(WORKER), str(tmp_path / "out"), str(recipe), "auto", "--kill-rank", "1", "--kill-step", "1"],
        tmp_path, timeout=180,
    )
    output = done.stdout + done.stderr
    print(f"killed-rank launch: {seconds:.1f}s")
    assert done.returncode != 0
    assert "rank 1 kills itself at step 1" in output
    assert "Signal 9 (SIGKILL)" in output and "rank" in output
    assert not (tmp_path / "out" / "auto" / "stages" / "sft" / "manifest.json").exists()


# Every other stage kind, through the command users run, with 2 processes: pretrain, LoRA SFT, reward
# model, DPO (LoRA reference from the SFT adapters' base), PPO against the reward model (value head,
# adaptive KL), GRPO with DAPO's dynamic sampling (the micro model answers nothing right, so every group is
# dropped and both processes must take the extra round together, or ZeRO-3's gathered generation hangs),
# evaluations and a gate after stages, and the report.
SMOKE_RECIPE = """\
name: smoke
seed: 0
model: {name_or_path: "builtin:micro"}
evaluate_base: false
logging: {report_to: [], samples: 2, sample_max_new_tokens: 4}
stages:
  - name: pretrain
    kind: pretrain
    data: {source: "builtin:corpus", count: 16}
    train: {steps: 2, batch_size: 2, grad_accum: 2, seq_len: 32, lr: 1.0e-3, log_every: 1, gradient_checkpointing: true}
  - name: sft
    kind: sft
    lora: {r: 4, alpha: 8}
    data: {source: "builtin:arithmetic", count: 32, levels: [1]}
    train: {steps: 2, batch_size: 2, seq_len: 32, lr: 1.0e-3, log_every: 1}
  - name: rm
    kind: reward_model
    evaluate: false
    data: {source: "builtin:preferences", count: 16, levels: [1]}
    train: {steps: 2, batch_size: 2, seq_len: 32, lr: 1.0e-3, log_every: 1}
  - name: dpo
    kind: dpo
    from: sft
    evaluate: false
    data: {source: "builtin:preferences", count: 16, levels: [1]}
    train: {steps: 2, batch_size: 2, seq_len: 32, lr: 1.0e-3, log_every: 1}
  - name: ppo
    kind: ppo
    from: dpo
    data: {source: "builtin:arithmetic", count: 16, levels: [1]}
    reward:
      - {source: reward_model, args: {path: "stage:rm"}}
    kl: {coef: 0.05, estimator: k1, controller: adaptive, target: 1.0, horizon: 100}
    generation: {max_new_tokens: 4}
    value_lr: 1.0e-3
    train: {steps: 2, prompts_per_step: 2, epochs: 2, mini_batches: 2, log_every: 1}
  - name: dapo
    kind: grpo
    from: sft
    evaluate: false
    data: {source: "builtin:arithmetic", count: 16, levels: [1]}
    reward:
      - {source: math}
    group_size: 2
    dapo: {max_extra_rounds: 1}
    generation: {max_new_tokens: 4}
    train: {steps: 2, prompts_per_step: 2, log_every: 1}
evaluations:
  - {name: arith, kind: exact_match, data: {source: "builtin:arithmetic", split: test, count: 4, levels: [1]}, max_new_tokens: 4}
gates:
  - {metric: arith.accuracy, max_drop: 1.0}
"""


@pytest.mark.parametrize("config", ["ddp.yaml", "zero3.yaml"])
def test_every_stage_kind_runs_with_two_processes(tmp_path, config):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    recipe = tmp_path / "smoke.yaml"
    recipe.write_text(SMOKE_RECIPE)
    run = tmp_path / "run"
    done, seconds = accelerate_launch(config, ["-m", "posttrain.run", str(recipe), "--output-dir", str(run)], tmp_path)
    print(f"smoke launch ({config}): {seconds:.1f}s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    for stage in ("pretrain", "sft", "rm", "dpo", "ppo", "dapo"):
        assert done.stdout.count(f"[{stage}] running") == 1  # only the main process prints
        manifest = json.loads((run / "stages" / stage / "manifest.json").read_text())
        assert manifest["complete"] and manifest["checkpoint_hash"]
        assert [row["step"] for row in metrics(run, stage)] == [1, 2]  # one writer
        loader = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
        loader.from_pretrained(run / "stages" / stage / "checkpoint")  # plain HF checkpoints, LoRA merged
    assert not (run / "stages" / "sft" / "checkpoint" / "adapter_config.json").exists()
    # both processes took DAPO's one extra round (the logged value is their mean)
    assert [row["dapo/extra_rounds"] for row in metrics(run, "dapo")] == [1.0, 1.0]
    assert [row["stage"] for row in json.loads((run / "evaluations.json").read_text())] == ["pretrain", "sft", "ppo"]
    assert (run / "report.html").is_file()


# The RLAIF generation stages with 2 processes, after a short SFT on the built-in demonstrations (so that
# revisions end with an end token): each stage runs, prints and writes its data once.
RLAIF_RECIPE = """\
name: rlaif-smoke
seed: 0
model: {{name_or_path: "builtin:micro"}}
evaluate_base: false
logging: {{report_to: [], samples: 0}}
stages:
  - name: sft
    kind: sft
    data: {{source: "builtin:rlaif", count: 600, levels: [1], constitution: {constitution}}}
    train: {{steps: 40, batch_size: 8, seq_len: 128, lr: 3.0e-3, log_every: 10}}
  - name: critique
    kind: constitutional
    constitution: {constitution}
    data: {{source: "builtin:arithmetic", count: 6, levels: [1]}}
    rounds: 1
    response: {{max_new_tokens: 10, temperature: 1.0}}
    revise: {{max_new_tokens: 10, temperature: 0.0}}
    evaluate: false
  - name: judge
    kind: ai_judge
    from: sft
    constitution: {constitution}
    data: {{source: "builtin:arithmetic", count: 6, levels: [1]}}
    candidates: 2
    generation: {{max_new_tokens: 10}}
    evaluate: false
"""


def test_constitutional_and_judge_stages_run_with_two_processes(tmp_path):
    recipe = tmp_path / "rlaif.yaml"
    recipe.write_text(RLAIF_RECIPE.format(constitution=REPO / "recipes" / "constitutions" / "arithmetic.yaml"))
    run = tmp_path / "run"
    done, seconds = accelerate_launch("ddp.yaml", ["-m", "posttrain.run", str(recipe), "--output-dir", str(run)], tmp_path)
    print(f"rlaif launch (ddp): {seconds:.1f}s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    for stage in ("sft", "critique", "judge"):
        assert done.stdout.count(f"[{stage}] running") == 1  # only the main process prints
        assert json.loads((run / "stages" / stage / "manifest.json").read_text())["complete"]
    trace = (run / "stages" / "critique" / "data" / "trace.jsonl").read_text().splitlines()
    assert len(trace) == 6  # one round per prompt, written once (not once per process)
    assert (run / "stages" / "judge" / "data" / "pairs.jsonl").is_file()
