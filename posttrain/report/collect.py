"""Reading a run directory into what the report shows: recipe, evaluation table, and per-stage records.

Reads only files (no torch): the report can be written for a finished, failed or still-running run, on
any machine the run directory was copied to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.report.samples import read_samples

FAILED = "failed.json"  # in a stage folder: why the stage (or its evaluation or gate) failed, {"error": ...}


@dataclass
class StageRecord:
    """One stage folder (or ``base``, the starting model's evaluation)."""

    name: str
    kind: str
    manifest: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    samples: dict[str, Any] | None = None  # samples.json: {"key", "samples": [...], "seconds"}
    episodes: dict[str, list[dict[str, Any]]] | None = None  # episodes.json of an RL stage with an environment
    failure: str | None = None  # the error text of a failed stage (failed.json)

    @property
    def trained(self) -> bool:
        return bool(self.manifest and self.manifest.get("complete"))


@dataclass
class RunRecord:
    """Everything the report needs from a run directory."""

    run_dir: Path
    name: str
    recipe_text: str
    table: list[dict[str, Any]]
    stages: list[StageRecord]

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`, skipping a torn last line of a run that is still writing."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def collect(run_dir: str | Path) -> RunRecord:
    """Reads a run directory written by the pipeline."""
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no recipe.yaml); runs are written to runs/NAME")
    recipe_text = recipe_file.read_text()
    recipe = yaml.safe_load(recipe_text) or {}
    names = [("base", "base model")] + [
        (s["name"], s.get("kind", "?")) for s in recipe.get("stages", []) if isinstance(s, dict) and "name" in s
    ]
    stages = []
    for name, kind in names:
        folder = run_dir / "stages" / name
        if not folder.is_dir():
            continue
        stages.append(
            StageRecord(
                name=name,
                kind=kind,
                manifest=_json(folder / "manifest.json"),
                metrics=read_metrics(folder / "metrics.jsonl"),
                evaluation=_json(folder / "eval.json"),
                samples=read_samples(folder),
                episodes=_json(folder / "episodes.json"),  # posttrain.rl.episodes.EPISODES_FILE (no torch here)
                failure=(_json(folder / FAILED) or {}).get("error"),
            )
        )
    return RunRecord(
        run_dir=run_dir,
        name=str(recipe.get("name", run_dir.name)),
        recipe_text=recipe_text,
        table=_json(run_dir / "evaluations.json") or [],
        stages=stages,
    )

