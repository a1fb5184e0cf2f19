"""Cost of crash-proofing on the built-in tiny model: how long one training-state save takes, and how long a
run killed mid-stage takes to reach its first new step with `posttrain run RECIPE --resume`.

    python benchmarks/resume_overhead.py [--saves 10] [--json PATH]

Save: the tiny model (~0.85M parameters) after one AdamW step, `TrainCheckpoints.save` called ``--saves``
times in this process (weights, optimizer, RNG, state, hashes, fsync, rename); the first save is reported
apart (it pays one-off imports: `accelerator.unwrap_model` imports DeepSpeed when it is installed, which the
stage's final save would pay anyway), and one restore (verify hashes, load) into a fresh model. Resume: an SFT stage of the tiny model with ``save_every: 10`` runs in a
subprocess until its step-20 state is complete, is killed with SIGKILL, and `posttrain run --resume`
starts in a new process; the time (wall and CPU) from that process's start to its first logged new step
(21) is the resume time, compared with a fresh process of the same recipe up to its step 1. Both include
Python, torch and transformers imports, which dominate; the difference is the resume overhead (find,
verify and load the state), also timed in-process (``restore_s``). On a shared machine wall times follow
the load (printed), CPU seconds much less. Targets (issue 9): save <= 1 s,
resumed run at its first new step <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: resume-bench
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:tiny"}}
logging: {{report_to: [], report: false, samples: 0, progress: plain}}
stages:
  - name: sft
    kind: sft
    evaluate: false
    data: {{source: "builtin:arithmetic", count: 512}}
    train: {{steps: 60, batch_size: 8, seq_len: 128, lr: 1.0e-3, log_every: 1, save_every: 10}}
"""


def time_saves(saves: int) -> dict[str, float]:
    import torch
    from accelerate import Accelerator

    from posttrain.config.common import TrainSpec
    from posttrain.models.tiny import build_tiny_model
    from posttrain.training.optimizer import make_optimizer
    from posttrain.training.state import TrainCheckpoints, latest_checkpoint

    model, _ = build_tiny_model("tiny", seed=0)
    optimizer = make_optimizer(model, TrainSpec(steps=1, lr=1e-3))
    ids = torch.arange(64)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    accelerator = Accelerator(cpu=True)
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        keep = TrainCheckpoints(Path(folder), 1, 2, {}, accelerator)
        for step in range(1, saves + 2):
            began = time.perf_counter()
            keep.save(step, model, optimizer, {})
            seconds.append(time.perf_counter() - began)
        size = sum(p.stat().st_size for p in keep.folder.rglob("*") if p.is_file()) / 2
        fresh, _ = build_tiny_model("tiny", seed=1)
        fresh_optimizer = make_optimizer(fresh, TrainSpec(steps=1, lr=1e-3))
        began = time.perf_counter()
        TrainCheckpoints(Path(folder), 1, 2, {}, accelerator, resume_from=latest_checkpoint(Path(folder))).restore(
            fresh, fresh_optimizer
        )
        restore = time.perf_counter() - began
    params = sum(p.numel() for p in model.parameters())
    later = seconds[1:]
    return {
        "parameters": params,
        "bytes_per_state": int(size),
        "first_save_s": round(seconds[0], 4),
        "save_median_s": round(statistics.median(later), 4),
        "save_max_s": round(max(later), 4),
        "restore_s": round(restore, 4),
    }


def wait_for(predicate, timeout: float, process: subprocess.Popen | None = None) -> float:
    began = time.perf_counter()
    while not predicate():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process ended early with {process.returncode}: {process.stderr.read()}")
        if time.perf_counter() - began > timeout:
            raise TimeoutError("waited too long")
        time.sleep(0.01)
    return time.perf_counter()


def logged_step(metrics: Path, step: int) -> bool:
    if not metrics.is_file():
        return False
    return any(f'"step": {step},' in line for line in metrics.read_text().splitlines())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_until_step(command: list[str], env: dict, metrics: Path, step: int) -> dict[str, float]:
    """Starts ``command``, waits until ``metrics`` logs ``step``, kills it; wall and CPU seconds to get there,
    and the row's own ``time`` (seconds since the stage started: the model is loaded by then)."""
    cpu_before, started = _children_cpu(), time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reached = wait_for(lambda: logged_step(metrics, step), 300, process) - started
    process.kill()
    output = process.stdout.read()
    process.wait()
    row = next(json.loads(line) for line in metrics.read_text().splitlines() if json.loads(line)["step"] == step)
    return {
        "process_start_to_step_s": round(reached, 2),
        "process_cpu_s": round(_children_cpu() - cpu_before, 2),
        "stage_start_to_step_s": row["time"],
        "log": next((line.strip() for line in output.splitlines() if "resuming from step" in line), ""),
    }


def time_resume() -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for name in ("killed", "fresh"):
            recipe = Path(folder) / name / "recipe.yaml"
            recipe.parent.mkdir()
            recipe.write_text(RECIPE.format(output_dir=recipe.parent / "run"))
            runs[name] = (recipe, recipe.parent / "run" / "stages" / "sft")
        recipe, stage = runs["killed"]
        command = [sys.executable, "-m", "posttrain.cli", "run", str(recipe)]
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (stage / "resume" / "step-00000020" / "COMPLETE").is_file(), 300, first)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = max(json.loads(line)["step"] for line in (stage / "metrics.jsonl").read_text().splitlines())
        resumed = run_until_step(command + ["--resume"], env, stage / "metrics.jsonl", 21)
        recipe, stage = runs["fresh"]
        fresh = run_until_step([sys.executable, "-m", "posttrain.cli", "run", str(recipe)], env, stage / "metrics.jsonl", 1)
    fresh.pop("log")
    return {"killed_after_step": killed_at, "resumed_to_step_21": resumed, "fresh_to_step_1": fresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "torch": torch.__version__,
        "save": time_saves(args.saves),
        "resume": time_resume(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
