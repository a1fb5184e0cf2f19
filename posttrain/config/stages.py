"""The fields every stage has, and the registry that maps `kind:` to its config class.

Stage kind X registers its config class in `posttrain.config.X` (no torch) and its implementation in
`posttrain.stages.X`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from posttrain.config.common import Strict
from posttrain.config.decontamination import DecontaminationSpec, decontamination_setting
from posttrain.registry import Registry
from posttrain.run_paths import check_plain_name

STAGE_CONFIGS: Registry[type["StageConfig"]] = Registry("stage kind")
# `@register_stage_config("kind")` makes `kind:` in a recipe resolve to the decorated config class.
register_stage_config = STAGE_CONFIGS.register
stage_config_class = STAGE_CONFIGS.get


class StageConfig(Strict):
    """Fields every stage has."""

    name: str = Field(description="Unique name; other stages refer to it in `from:` and overrides use it.")
    kind: str = Field(description="What the stage does; one of the registered kinds.")
    from_: str | None = Field(
        None,
        alias="from",
        description="Stage whose checkpoint this stage starts from; `base` for the recipe's model. "
        "Default: the previous stage (the recipe's model for the first stage).",
    )
    evaluate: bool = Field(True, description="Run the recipe's evaluations after this stage.")
    decontaminate: DecontaminationSpec = Field(
        default_factory=DecontaminationSpec, description="Rows of the stage's data (`data`, `replay.data`) that "
        "contain rows of the recipe's evaluation sets are removed before it trains (`false` turns it off).",
    )
    # False for a stage that writes data only (`curate`): the stage after it starts from the one before it
    makes_checkpoint: ClassVar[bool] = True

    _plain_name = field_validator("name")(classmethod(lambda cls, name: check_plain_name(name, "stage name")))
    _decontaminate = field_validator("decontaminate", mode="before")(classmethod(lambda cls, v: decontamination_setting(v)))

