"""`posttrain run RECIPE --dry-run`: what a run would do, without importing torch or training anything.

For every stage: where it starts from, whether its finished checkpoint would be reused (and if not, why),
and an estimate of its optimizer steps and of the token positions it processes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from posttrain.config.common import DataSpec, TrainSpec
from posttrain.config.stages import StageConfig
from posttrain.files import read_json
from posttrain.fingerprints import MANIFEST, input_hash
from posttrain.pipeline import Pipeline
from posttrain.data.sources import resolve_data_path
from posttrain.recipe import LoadedRecipe

BUILTIN_DEFAULT_COUNT = 2000  # rows a built-in dataset generates when `count` is not set
# stages whose rows are preference pairs: each example is two sequences (chosen and rejected)
SEQUENCES_PER_EXAMPLE = {"dpo": 2, "reward_model": 2}


@dataclass
class StagePlan:
    """What a run would do with one stage."""

    name: str
    kind: str
    start: str
    reuse: bool
    reason: str
    steps: str
    tokens: str


def example_count(spec: DataSpec, recipe_dir: Path) -> int | None:
    """Rows a data spec yields: ``count``, the built-in default, or the lines of a JSONL file."""
    if spec.source.startswith("builtin:"):
        return spec.count or BUILTIN_DEFAULT_COUNT
    path = resolve_data_path(spec.source, recipe_dir)
    if path is not None and path.suffix == ".jsonl" and path.is_file():
        with path.open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        return min(lines, spec.count) if spec.count else lines
    return spec.count


def estimate(stage: StageConfig, recipe_dir: Path, world_size: int) -> tuple[str, str]:
    """(steps, tokens) as text; ``~`` marks an epoch-based upper estimate (packing several examples per
    row lowers it), ``<=`` the most tokens an RL stage can generate, ``?`` an unknown."""
    train = getattr(stage, "train", None)
    if not isinstance(train, TrainSpec):
        return _rollout_estimate(stage, world_size)
    global_batch = train.batch_size * train.grad_accum * world_size
    if train.steps is not None:
        steps, prefix = train.steps, ""
    else:
        data = getattr(stage, "data", None)
        examples = example_count(data, recipe_dir) if isinstance(data, DataSpec) else None
        if examples is None:
            return f"? ({train.epochs:g} epochs)", "?"
        steps, prefix = max(1, math.ceil(train.epochs * examples / global_batch)), "~"
    positions = steps * global_batch * train.seq_len * SEQUENCES_PER_EXAMPLE.get(stage.kind, 1)
    return f"{prefix}{steps:,}", f"{prefix}{positions:,}"


def _rollout_estimate(stage: StageConfig, world_size: int) -> tuple[str, str]:
    """RL stages (``train.steps`` and ``train.prompts_per_step``, ``group_size`` completions per prompt of
    at most ``generation.max_new_tokens``): steps and the most completion tokens they generate."""
    train = getattr(stage, "train", None)
    steps = getattr(train, "steps", None)
    if not isinstance(steps, int):
        return "?", "?"
    prompts = getattr(train, "prompts_per_step", None)
    max_new_tokens = getattr(getattr(stage, "generation", None), "max_new_tokens", None)
    if not (isinstance(prompts, int) and isinstance(max_new_tokens, int)):
        return f"{steps:,}", "?"
    generated = steps * prompts * getattr(stage, "group_size", 1) * world_size * max_new_tokens
    return f"{steps:,}", f"<={generated:,} generated"


def plan_run(loaded: LoadedRecipe, world_size: int | None = None) -> list[StagePlan]:
    """The plan for every stage of a recipe, reading only the run directory's manifests."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    pipeline = Pipeline(loaded)
    recipe = loaded.recipe
    reused: dict[str, bool] = {}
    plans = []
    for index, (stage, fingerprint) in enumerate(zip(recipe.stages, pipeline.fingerprints())):
        parent = recipe.parent_of(index)
        parent_checkpoint = pipeline.stage_dir(parent) / "checkpoint" if parent else None
        manifest = read_json(pipeline.stage_dir(stage.name) / MANIFEST) or {}
        if parent is not None and not reused[parent]:
            reuse, reason = False, f"{parent} re-runs"
        elif pipeline.is_complete(stage.name, fingerprint, parent_checkpoint):
            reuse, reason = True, "unchanged"
        elif not manifest.get("complete"):
            reuse, reason = False, "not run yet"
        elif manifest.get("fingerprint") != fingerprint:
            reuse, reason = False, "config, data or seed changed"
        elif manifest.get("input_hash") != input_hash(parent_checkpoint):
            reuse, reason = False, "input checkpoint changed"
        else:
            reuse, reason = False, "checkpoint missing"
        reused[stage.name] = reuse
        steps, tokens = estimate(stage, loaded.directory, world_size)
        plans.append(StagePlan(stage.name, stage.kind, parent or "base", reuse, reason, steps, tokens))
    return plans


def format_plan(loaded: LoadedRecipe, plans: list[StagePlan]) -> str:
    """The plan as an aligned table with the run directory and evaluations."""
    header = ["stage", "kind", "from", "action", "steps", "tokens"]
    rows = [
        [p.name, p.kind, p.start, ("reuse" if p.reuse else "run") + f" ({p.reason})", p.steps, p.tokens]
        for p in plans
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = [f"Dry run of {loaded.path}: nothing is trained.", f"Run directory: {loaded.run_dir()}", ""]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, ["-" * w for w in widths], *rows]]
    evaluations = ", ".join(f"{e.name} ({e.kind})" for e in loaded.recipe.evaluations) or "none"
    to_run = [p.name for p in plans if not p.reuse]
    lines += [
        "",
        f"Evaluations after each stage: {evaluations}",
        f"Would train: {', '.join(to_run) or 'nothing (every stage is reused)'}",
        "Tokens: sequence positions trained on, steps x batch_size x grad_accum x processes x seq_len (padding "
        "included; ~ = estimated from epochs before packing); for RL stages, the most completion tokens "
        "generated, steps x prompts_per_step x group_size x processes x max_new_tokens.",
    ]
    return "\n".join(lines)
