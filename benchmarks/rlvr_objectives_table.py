"""The side-by-side table of a `recipes/rlvr_objectives.yaml` run: held-out accuracy of each RL stage (with
its standard error), and what a step cost.

    posttrain run recipes/rlvr_objectives.yaml --output-dir RUN
    python benchmarks/rlvr_objectives_table.py RUN [--markdown]

Accuracy is the `arithmetic` evaluation after the stage (greedy answers to the recipe's held-out problems);
its standard error is sqrt(p (1 - p) / n) for n problems, which bounds what a single seed can tell apart.
Per step: wall seconds (the stage's own clock, generation + scoring + update), completions generated
(DAPO's extra rounds included) and completion tokens trained on. Timings on a shared CPU are noise: say the
load with them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

STAGES = ("sft", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp")


def stage_row(run: Path, name: str) -> dict[str, float] | None:
    folder = run / "stages" / name
    if not (folder / "eval.json").is_file():
        return None
    metrics = json.loads((folder / "eval.json").read_text())["metrics"]
    accuracy, count = metrics["arithmetic.accuracy"], metrics["arithmetic.n"]
    row = {"accuracy": accuracy, "se": math.sqrt(accuracy * (1 - accuracy) / count), "n": count}
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()] if name != "sft" else []
    steps = [step for step in steps if "time/update" in step]
    if steps:
        seconds = [step["time/generation"] + step["time/scoring"] + step["time/update"] for step in steps]
        row["seconds_per_step"] = sum(seconds) / len(seconds)
        row["tokens_per_step"] = sum(step["completion_tokens"] for step in steps) / len(steps)
        config = json.loads((folder / "manifest.json").read_text())["config"]
        extra = sum(step.get("dapo/extra_completions", 0.0) for step in steps) / len(steps)
        row["completions_per_step"] = config["train"]["prompts_per_step"] * config["group_size"] + extra
        row["train_reward_last10"] = sum(step["reward/total/mean"] for step in steps[-10:]) / len(steps[-10:])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run's output folder")
    options = parser.parse_args()
    print("| stage | held-out accuracy ± SE (n) | s / step | completions / step | completion tokens in the batch / step | train reward, last 10 steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in STAGES:
        row = stage_row(options.run, name)
        if row is None:
            print(f"| {name} | not run | | | | |")
            continue
        timing = (
            f"{row['seconds_per_step']:.2f} | {row['completions_per_step']:.0f} | {row['tokens_per_step']:.0f} | {row['train_reward_last10']:.3f}"
            if "seconds_per_step" in row else " | | | "
        )
        print(f"| {name} | {row['accuracy']:.3f} ± {row['se']:.3f} ({row['n']:.0f}) | {timing} |")


if __name__ == "__main__":
    main()
