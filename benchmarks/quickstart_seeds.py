"""The quickstart's learning story over seeds and CPU kernel settings: the table README shows.

    python benchmarks/quickstart_seeds.py [--seeds 0 1 2] [--settings default kernels] [--jobs 2]
                                          [--recipe recipes/quickstart.yaml] [--out DIR] [--json PATH]
                                          [--set KEY=VALUE ...] [--start-from DIR]
    python benchmarks/quickstart_seeds.py --collect DIR [DIR ...]   # the table of finished runs only

Runs ``python -m posttrain.run RECIPE --set seed=S --set model.seed=S`` (the seed of data order and sampling,
and of the built-in model's initial weights and tokenizer) once per (seed, setting) in its own run folder, each
process with one thread (``--jobs`` of them at a time), then reads every run's ``evaluations.json`` and
its PPO stage's held-out metrics, and prints one row per run and the mean ± standard deviation over runs.
``--set`` adds overrides to every run (e.g. ``--set stages.grpo.generation.backend=vllm``); ``--start-from``
copies each (seed, setting)'s run folder from an earlier invocation's ``--out`` first, so the stages the
overrides leave unchanged are reused (their checkpoints and evaluations are that run's) and only the changed
ones train: a comparison of one stage's settings on the same earlier stages.

A setting is a set of environment variables that changes which CPU kernels torch runs, so the same recipe
and seed take a different floating-point path (tests/conftest.py says which variables do so, measured):

    default   the machine's own kernels
    kernels   ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE (torch's unvectorised ATen kernels and
              MKL's compatibility code path: both change float32 results on AVX2 and AVX-512 CPUs)

The goals of the quickstart (issue 17) are checked on every run and printed as PASS/FAIL:
SFT held-out accuracy >= 0.30, GRPO >= SFT + 0.10, PPO >= SFT - 0.02 with a higher reward-model score of
sampled held-out answers than the SFT model's (PPO's held-out evaluation before its first step), reward
model >= 0.90 on held-out pairs, and no RewardHackingWarning.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "default": {},
    "kernels": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}
COLUMNS = ("sft", "grpo", "ppo", "reward_model", "ppo_rm_sampled_gain", "minutes")


def run_one(recipe: Path, seed: int, setting: str, out: Path, overrides: list[str], start_from: Path | None) -> dict:
    """One quickstart run (a finished run folder is reused stage by stage, as any recipe run); its figures."""
    run_dir = out / f"seed{seed}-{setting}"
    if start_from is not None and not run_dir.exists():
        shutil.copytree(start_from / f"seed{seed}-{setting}", run_dir, symlinks=True)
    env = {**os.environ, **SETTINGS[setting], "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "posttrain.run", str(recipe), "--set", f"seed={seed}", "--set", f"model.seed={seed}",
        "--set", f"output_dir={run_dir}", *(part for override in overrides for part in ("--set", override)),
    ]
    started = time.perf_counter()
    with open(out / f"seed{seed}-{setting}.log", "w") as log:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    minutes = (time.perf_counter() - started) / 60
    return {"seed": seed, "setting": setting, "returncode": code, "minutes": minutes, **figures(run_dir)}


def collected(out: Path, seed: int, setting: str) -> dict:
    """A finished run of an earlier invocation: its figures, and its wall minutes from the run folder's
    recipe.yaml (written first) to its evaluations.json (written last)."""
    run_dir = out / f"seed{seed}-{setting}"
    done = run_dir / "evaluations.json"
    try:
        found = figures(run_dir)
    except (OSError, KeyError, IndexError):  # not finished (-1 in the exit column)
        return {"seed": seed, "setting": setting, "returncode": -1, "minutes": 0.0, **dict.fromkeys(COLUMNS[:-1], 0.0),
                "hacking_warning": False}
    minutes = (done.stat().st_mtime - (run_dir / "recipe.yaml").stat().st_mtime) / 60
    return {"seed": seed, "setting": setting, "returncode": 0, "minutes": minutes, **found}


def _rows(path: Path, key: str) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if key in line]


def figures(run_dir: Path) -> dict:
    """The quickstart's headline figures from a finished run folder."""
    table = {row["stage"]: row for row in json.loads((run_dir / "evaluations.json").read_text())}
    stages = run_dir / "stages"
    sampled = _rows(stages / "ppo" / "metrics.jsonl", "heldout/sampled_reward")
    warned = any(
        row.get("heldout/hacking_warning") == 1
        for stage in ("grpo", "ppo") for row in _rows(stages / stage / "metrics.jsonl", "heldout/hacking_warning")
    )
    return {
        "sft": table["sft"]["arithmetic.accuracy"],
        "grpo": table["grpo"]["arithmetic.accuracy"],
        "ppo": table["ppo"]["arithmetic.accuracy"],
        "reward_model": table["reward_model"]["preferences.accuracy"],
        "ppo_rm_sampled_gain": sampled[-1]["heldout/sampled_reward"] - sampled[0]["heldout/sampled_reward"],
        "hacking_warning": warned,
    }


def goals(row: dict) -> list[str]:
    """The goals a run misses (empty: all met)."""
    missed = []
    if row["returncode"] != 0:
        missed.append(f"exit {row['returncode']}")
    if row["sft"] < 0.30:
        missed.append("sft<0.30")
    if row["grpo"] < row["sft"] + 0.10:
        missed.append("grpo<sft+0.10")
    if row["ppo"] < row["sft"] - 0.02:
        missed.append("ppo<sft-0.02")
    if row["ppo_rm_sampled_gain"] <= 0:
        missed.append("rm score not raised")
    if row["reward_model"] < 0.90:
        missed.append("rm<0.90")
    if row["hacking_warning"]:
        missed.append("RewardHackingWarning")
    return missed


def print_table(rows: list[dict]) -> None:
    header = f"{'seed':>4} {'setting':8} " + " ".join(f"{c:>19}" for c in COLUMNS) + "  goals"
    print(header)
    for row in [r for r in rows if r["returncode"] == -1]:
        print(f"{row['seed']:>4} {row['setting']:8} not finished")
    rows = [r for r in rows if r["returncode"] != -1]
    if not rows:
        return
    for row in rows:
        cells = " ".join(f"{row[c]:>19.3f}" for c in COLUMNS)
        missed = goals(row)
        print(f"{row['seed']:>4} {row['setting']:8} {cells}  {'PASS' if not missed else 'FAIL: ' + ', '.join(missed)}")
    means = " ".join(
        f"{statistics.mean(r[c] for r in rows):>10.3f} ± {statistics.pstdev(r[c] for r in rows):<6.3f}" for c in COLUMNS
    )
    print(f"{'all':>4} {'mean±sd':8} {means}  {sum(not goals(r) for r in rows)}/{len(rows)} runs meet every goal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart_seeds")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (posttrain.run's --set); repeatable")
    parser.add_argument("--start-from", type=Path, help="copy each run's folder from this earlier --out first")
    parser.add_argument("--collect", type=Path, nargs="+", help="run nothing: read the runs already in these folders")
    args = parser.parse_args()
    grid = [(seed, setting) for setting in args.settings for seed in args.seeds]
    if args.collect:
        rows = [collected(out, seed, setting) for seed, setting in grid for out in args.collect
                if (out / f"seed{seed}-{setting}").is_dir()]
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(
                lambda job: run_one(args.recipe.resolve(), *job, args.out.resolve(), args.overrides,
                                    args.start_from.resolve() if args.start_from else None), grid))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    how = f"collected from {', '.join(map(str, args.collect))}" if args.collect else f"{args.jobs} at a time"
    overrides = f"; overrides: {' '.join(args.overrides)}" if args.overrides else ""
    print(f"# {args.recipe.name}, {len(rows)} runs, {how}, 1 thread each; CPU: {cpu}{overrides}")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
