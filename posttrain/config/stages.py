"""Stage configurations, one class per stage kind, and the registry that maps `kind:` to its class.

A stage kind registers its config class here (no torch) and its implementation in `posttrain.stages`.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.config.common import DataSpec, LoraSpec, Strict, TrainSpec
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

    _plain_name = field_validator("name")(classmethod(lambda cls, name: check_plain_name(name, "stage name")))


class ReplaySpec(Strict):
    """Continued pre-training: keep a share of an earlier corpus in the mix against forgetting."""

    data: DataSpec = Field(description="The earlier corpus to replay.")
    ratio: float = Field(gt=0, lt=1, description="Share of training documents drawn from the replay corpus.")


@register_stage_config("pretrain")
class PretrainConfig(StageConfig):
    """Causal language modelling on plain text (pre-training or continued pre-training)."""

    data: DataSpec = Field(description="Corpus with a `text` column (or built-in `builtin:corpus`).")
    replay: ReplaySpec | None = Field(None, description="Optional replay mix of an earlier corpus.")
    train: TrainSpec = Field(description="Optimisation settings.")


@register_stage_config("sft")
class SFTConfig(StageConfig):
    """Supervised fine-tuning on chat or prompt/completion data; loss on assistant tokens only."""

    data: DataSpec = Field(description="Chat `messages` or `prompt`/`completion` rows.")
    train: TrainSpec = Field(description="Optimisation settings.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    loss_on_prompt: bool = Field(False, description="Also train on user/system tokens (default: assistant only).")
