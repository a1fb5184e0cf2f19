"""Recipe section `decontaminate:` (no torch): removal of rows that contain rows of the recipe's own evaluation
sets (`posttrain.curation.decontamination`). Every stage has it: a training stage checks its own `data:` (and
pre-training's `replay.data`) before reading it, a `curate` stage checks its sources. On by default;
``decontaminate: false`` turns it off for one stage.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from posttrain.config.common import DataSpec, Strict


class EvaluationSet(Strict):
    """One evaluation set a stage checks against (filled in from the recipe)."""

    name: str = Field(description="The evaluation's name, or `STAGE.heldout`.")
    data: DataSpec = Field(description="Its data.")


class DecontaminationSpec(Strict):
    """Removal of training rows containing evaluation rows (`posttrain.curation.decontamination`)."""

    enabled: bool = Field(True, description="On by default: check against every evaluation set of the recipe.")
    ngram: int = Field(13, gt=0, description="n-gram length in words (13: GPT-3, arXiv 2005.14165 app. C); a shorter "
                       "evaluation row is matched as one n-gram of its own length.")
    threshold: float = Field(1e-9, gt=0, le=1, description="Share of an evaluation row's n-grams a training row must "
                             "contain to be removed; the default, any one n-gram, is GPT-3's rule.")
    min_words: int = Field(4, gt=0, description="Evaluation rows shorter than this (in words) are not checked.")
    common_rows: int | None = Field(
        10, gt=0, description="An evaluation n-gram found in more than this many distinct training rows is common "
        "text (a stock phrase, boilerplate), not a leak, and is ignored (10: GPT-3, arXiv 2005.14165 app. C); "
        "null never ignores one. Distinct: copies of one row count once, so a leaked row repeated stays caught.",
    )
    against: list[str] | None = Field(
        None, description="Evaluation sets to check: names of `evaluations:` entries and `STAGE.heldout`; default all.",
    )
    sets: list[EvaluationSet] = Field(
        default_factory=list, description="Filled in when the recipe loads: the evaluation sets checked (do not write "
        "it; as part of the stage's data, a change to an evaluation set or its file re-runs the stage).",
    )


def decontamination_setting(value: Any) -> Any:
    """``decontaminate: false`` / ``true`` as shorthand for ``{enabled: false}`` / ``{enabled: true}``."""
    return {"enabled": value} if isinstance(value, bool) else value
