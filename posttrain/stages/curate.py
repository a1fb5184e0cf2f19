"""The `curate` stage: writes a curated dataset that later stages read as ``stage:NAME/rows``
(`posttrain.curation.curate`). It trains nothing and has no checkpoint of its own: the stage after it starts
from the stage before it (`Recipe.parent_of` skips it), and its ``checkpoint/`` folder holds only a note
saying so, with the hash of the rows it wrote (what the manifest records as the stage's output hash).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.config.curate import CurateConfig
from posttrain.curation.curate import curate
from posttrain.data.stage_outputs import stage_output_path
from posttrain.files import file_sha256
from posttrain.stages.base import Stage, register_stage

NOTE = "NO_MODEL.json"


@register_stage("curate")
class CurateStage(Stage):
    """Curates the sources; the main process writes, the others wait at the pipeline's barrier."""

    config: CurateConfig

    def train(self) -> dict[str, Any]:
        ctx = self.context
        if not ctx.accelerator.is_main_process:
            return {}
        out_dir = stage_output_path(ctx.stage_dir.parent, ctx.stage_dir.name, "rows").parent
        summary = curate(self.config, ctx.recipe_dir, ctx.seed, out_dir)
        ctx.metrics.log(1, curation_metrics(summary), total=1)
        return {"curation": summary, "seconds": summary["seconds"]}

    def save(self, folder: Path) -> str | None:
        ctx = self.context
        if not ctx.accelerator.is_main_process:
            return None
        rows = stage_output_path(ctx.stage_dir.parent, ctx.stage_dir.name, "rows")
        digest = file_sha256(rows)[:16]
        folder.mkdir(parents=True, exist_ok=True)
        note = {"stage": self.config.name, "kind": "curate", "model": None, "rows": str(rows), "rows_hash": digest,
                "why": "a curate stage writes data only; the next stage starts from the stage before this one"}
        (folder / NOTE).write_text(json.dumps(note, indent=2))
        return digest


def curation_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The counts as flat metrics (metrics.jsonl and trackers)."""
    metrics = {"rows/read": summary["rows_read"], "rows/kept": summary["rows_kept"], "rows/written": summary["rows_written"]}
    metrics.update({f"removed/{rule}": count for rule, count in summary["removed"].items()})
    metrics.update({f"contaminated/{name}": count for name, count in summary["contaminated_by_set"].items()})
    return {key: float(value) for key, value in metrics.items()}
