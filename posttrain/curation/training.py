"""Decontamination of a training stage's own data, on by default (issue 24).

Before a stage trains, the pipeline hands its config here (`decontaminate_training_data`): each training data
spec (`data`, pre-training's `replay.data`; `posttrain.config.curate.training_data`) is read as the curate
stage reads a source (`posttrain.curation.stream.source_records`, the rows as the stage's own loader makes
them), checked against the recipe's evaluation sets with the curate stage's rules (`Rules` with the
contamination index only: the same code, the same settings, `decontaminate:` on the stage), and

- when no row is removed, the spec is left as it is: the stage reads its data exactly as without this step;
- when rows are removed, the kept rows are written to ``stages/NAME/data/train_DATA.jsonl`` and the spec is
  pointed at that file (the removed rows, each with the evaluation row it contains, to ``removed.jsonl``).

Data a curate stage wrote is not checked again: that stage's own `decontaminate` settings decided (turning it
off there is how `recipes/curate_leak_demo.yaml` shows the leak). The counts, per evaluation set, with a few
removed rows, go to the stage's manifest (``summary.decontamination``) and the run report. Two passes over
the data: the first finds the evaluation n-grams that are common text (`count_common`). No torch here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from posttrain.config.common import DataSpec
from posttrain.config.curate import curated_by, training_data
from posttrain.config.stages import StageConfig
from posttrain.curation.curate import contamination_index, contamination_summary, count_common
from posttrain.curation.rules import Rules, Tally
from posttrain.curation.stream import Spool, source_records

# the spec fields that say which rows a built-in source generates: the written file replaces them
_GENERATOR_FIELDS = (
    "split", "count", "subset", "levels", "constitution", "negatives", "carry_slip", "demonstrations", "tool_share"
)


def _kept_file_spec(spec: DataSpec, path: Path) -> DataSpec:
    """``spec`` reading the written file of kept rows (row layout and bad-row policy as before)."""
    defaults = {name: DataSpec.model_fields[name].default for name in _GENERATOR_FIELDS}
    return spec.model_copy(update={"source": str(path), **defaults})


def decontaminate_training_data(
    stage: StageConfig, bound: StageConfig, recipe_dir: Path, seed: int, stage_dir: Path, curate_stages: set[str],
) -> tuple[StageConfig, dict[str, Any] | None]:
    """Removes the rows of ``bound``'s training data that contain evaluation rows.

    Args:
        stage: the stage's config as in the recipe (``stage:`` sources unresolved: tells curated data apart).
        bound: the same with ``stage:`` sources resolved to files (`bind_stage_outputs`); what is read.
        stage_dir: the stage's folder; kept and removed rows go to its ``data/``.
        curate_stages: the names of the recipe's curate stages.

    Returns:
        ``bound`` with each spec that lost rows pointed at its kept rows, and the summary for the manifest
        (None when decontamination is off or there is nothing to check).
    """
    started = time.time()
    index = contamination_index(bound, recipe_dir, seed)
    checked = [(key, spec) for (key, spec), (_, original) in zip(training_data(bound), training_data(stage))
               if curated_by(original, curate_stages) is None]
    if index is None or not index.rows or not checked:
        return bound, None
    count_common(index, [spec for _, spec in checked], recipe_dir, seed)
    rules = Rules(contamination=index, quality=None, exact=None, near=None,
                  tally=Tally(examples_per_rule=3))
    folder = stage_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    per_data, updates = {}, {}
    with (folder / "removed.jsonl").open("w") as removed:
        for key, spec in checked:
            spool, before, dropped = Spool(folder / f"train_{key}.jsonl"), rules.tally.seen, rules.tally.removed.total()
            for where, row in source_records(spec, recipe_dir, seed):
                removal = rules.check(row, where)
                if removal is None:
                    spool.append(row)
                else:
                    removed.write(json.dumps({"data": key, **removal.record()}, ensure_ascii=False) + "\n")
            spool.close()
            removed_here = rules.tally.removed.total() - dropped
            if removed_here and not len(spool):
                raise ValueError(
                    f"stage {stage.name!r}: all {removed_here} rows of `{key}` ({spec.source}) contain rows of the "
                    f"recipe's evaluation sets ({describe_sets(rules.tally.contaminated_by_set)}); to train on them "
                    f"anyway (e.g. to measure training accuracy) set `decontaminate: false` or `against:` on the stage")
            per_data[key] = {"source": spec.source, "read": rules.tally.seen - before, "removed": removed_here}
            if removed_here:
                per_data[key]["file"] = str(spool.path)
                updates[key] = _kept_file_spec(spec, spool.path)
            else:
                spool.path.unlink()  # nothing removed: the stage reads its data as given
    tally = rules.tally.summary()
    summary = {
        "rows_read": tally["rows_read"], "rows_removed": tally["removed"]["decontamination"],
        "contaminated_by_set": tally["contaminated_by_set"], "examples": tally["examples"].get("decontamination", []),
        "data": per_data, "skipped_curated": [key for key, _ in training_data(stage) if key not in dict(checked)],
        **contamination_summary(index), "seconds": time.time() - started,
    }
    return _with_specs(bound, updates), summary


def _with_specs(config: StageConfig, updates: dict[str, DataSpec]) -> StageConfig:
    """``config`` with the data specs at ``data`` / ``replay.data`` replaced."""
    changes: dict[str, Any] = {}
    if "data" in updates:
        changes["data"] = updates["data"]
    if "replay.data" in updates:
        changes["replay"] = config.replay.model_copy(update={"data": updates["replay.data"]})
    return config.model_copy(update=changes) if changes else config


def describe_sets(by_set: dict[str, int]) -> str:
    """``arith: 40, heldout: 2``."""
    return ", ".join(f"{name}: {count}" for name, count in sorted(by_set.items()))


def describe(summary: dict[str, Any]) -> str:
    """One log line: rows removed of rows read, per evaluation set, and the time taken."""
    sets = describe_sets(summary["contaminated_by_set"])
    return (f"decontamination: {summary['rows_removed']} of {summary['rows_read']} training rows contain evaluation "
            f"rows{f' ({sets})' if sets else ''}; {len(summary['evaluation_sets'])} sets checked, "
            f"{summary['seconds']:.1f}s")
