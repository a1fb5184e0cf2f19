"""The recipe's `logging:` section: where metrics go, how progress shows, and what the run report holds.

No torch here (the schema must load fast). `metrics.jsonl` is always written; `report_to` adds trackers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from posttrain.config.common import Strict

class LoggingConfig(Strict):
    """Metrics trackers, the progress display, sample generations and the end-of-run report."""

    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Trackers that receive every logged step besides `metrics.jsonl` (always written): "
        "`tensorboard` (event files in `RUN_DIR/tensorboard/<stage>/`) and `wandb` (needs "
        "`pip install wandb`; one W&B run per stage, grouped by recipe name). `[]` for none.",
    )
    wandb_project: str = Field("posttrain", description="W&B project that runs are logged to.")
    progress: Literal["auto", "bar", "plain"] = Field(
        "auto",
        description="`auto`: a live bar per stage when the output is a terminal, plain log lines otherwise "
        "(CI, nohup, pipes); `bar` or `plain` force one.",
    )
    samples: int = Field(
        4, ge=0, description="Prompts generated greedily from every evaluated checkpoint for the report; 0 disables."
    )
    sample_prompts: list[str] | None = Field(
        None,
        description="User messages to generate samples for (rendered with the chat template). Default: the "
        "first `samples` prompts of the recipe's first `exact_match` evaluation.",
    )
    sample_max_new_tokens: int = Field(32, gt=0, description="Generation budget per sample.")
    report: bool = Field(True, description="Write `report.html` and `report.md` into the run directory at the end of a run.")

    @field_validator("report_to")
    @classmethod
    def _unique(cls, trackers: list[str]) -> list[str]:
        if len(set(trackers)) != len(trackers):
            raise ValueError(f"each tracker may appear once, got {trackers}")
        return trackers
