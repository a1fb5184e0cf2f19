"""Data written by one stage and read by a later stage of the same run: ``source: "stage:NAME/OUTPUT"``.

A stage kind that generates data (e.g. `constitutional`, `ai_judge`) lists its outputs in its config
class's ``outputs`` and writes each as ``stages/NAME/data/OUTPUT.jsonl``. A later stage names it in any
data spec; the recipe check makes sure NAME is an earlier stage with that output, and before a stage runs
the pipeline replaces the source with the file (`bind_stage_outputs`). A consuming stage's fingerprint
includes the producing stage's fingerprint, so it re-runs whenever the data it reads may have changed.
No torch here.

>>> parse_stage_source("stage:critique/revisions")
('critique', 'revisions')
>>> parse_stage_source("data/train.jsonl") is None
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec, Strict
from posttrain.data.constitution import load_constitution
from posttrain.data.sources import resolve_data_path
from posttrain.errors import DataError
from posttrain.files import text_hash

STAGE_PREFIX = "stage:"


def parse_stage_source(source: str) -> tuple[str, str] | None:
    """``(stage, output)`` of a ``stage:NAME/OUTPUT`` source; None for any other source."""
    if not source.startswith(STAGE_PREFIX):
        return None
    name, _, output = source.removeprefix(STAGE_PREFIX).partition("/")
    return name, output


def stage_output_path(stages_dir: Path, stage: str, output: str) -> Path:
    """Where stage ``stage`` writes its output ``output``."""
    return stages_dir / stage / "data" / f"{output}.jsonl"


def source_problem(source: str, earlier: dict[str, Any]) -> str | None:
    """What is wrong with a ``stage:`` source given the earlier stages' configs by name (None if fine)."""
    parsed = parse_stage_source(source)
    if parsed is None:
        return None
    name, output = parsed
    if name not in earlier:
        return f"{source!r} names no earlier stage (earlier stages: {sorted(earlier) or 'none'})"
    outputs = getattr(earlier[name], "outputs", ())  # a class attribute, or a property of the config
    if output not in outputs:
        listed = ", ".join(f"stage:{name}/{o}" for o in outputs) or f"none (a {earlier[name].kind} stage writes no data)"
        return f"{source!r}: stage {name!r} has no output {output!r}; its outputs: {listed}"
    return None


def _bind(obj: Any, stages_dir: Path) -> Any:
    if isinstance(obj, DataSpec):
        parsed = parse_stage_source(obj.source)
        if parsed is None:
            return obj
        path = stage_output_path(stages_dir, *parsed)
        if not path.is_file():
            raise DataError(f"{obj.source}: stage {parsed[0]!r} has not written {path}; run it first")
        return obj.model_copy(update={"source": str(path)})
    if isinstance(obj, Strict):
        updates = {}
        for key in type(obj).model_fields:
            value = getattr(obj, key)
            bound = _bind(value, stages_dir)
            if bound is not value:
                updates[key] = bound
        return obj.model_copy(update=updates) if updates else obj
    if isinstance(obj, (list, tuple)):
        items = [_bind(item, stages_dir) for item in obj]
        return type(obj)(items) if any(a is not b for a, b in zip(items, obj)) else obj
    return obj


def bind_stage_outputs(config: Strict, stages_dir: Path) -> Strict:
    """``config`` with every ``stage:NAME/OUTPUT`` data source replaced by the file that stage wrote."""
    return _bind(config, stages_dir)


def linked_data_fingerprint(spec: DataSpec, recipe_dir: Path, seed: int, fingerprints: dict[str, str]) -> str | None:
    """The fingerprint of data that another file or stage decides, or None to use the ordinary one:

    - ``stage:NAME/OUTPUT``: the producing stage's fingerprint (its data is a function of it);
    - a spec with a ``constitution`` (``builtin:rlaif``): the constitution's content, templates included.
    """
    parsed = parse_stage_source(spec.source)
    if parsed is not None:
        return text_hash(f"{fingerprints.get(parsed[0])}/{parsed[1]}")
    if getattr(spec, "constitution", None):
        path = resolve_data_path(spec.constitution, recipe_dir)
        content = load_constitution(path).fingerprint() if path is not None and path.is_file() else "missing"
        dump = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
        return text_hash(f"{dump}/{seed}/{content}")
    return None
