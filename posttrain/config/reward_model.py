"""Recipe section of `kind: reward_model` (no torch): a scalar reward model trained on preference pairs (`prompt`,
`chosen`, `rejected`; see `posttrain.data.preferences` for the row layouts); the stage is
`posttrain.stages.reward_model`."""

from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.config.common import DataSpec, LoraSpec, TrainSpec, pairs_only
from posttrain.config.stages import StageConfig, register_stage_config


@register_stage_config("reward_model")
class RewardModelConfig(StageConfig):
    """A scalar reward model trained on preference pairs with the Bradley–Terry loss.

    The model is the starting causal LM's backbone with a new one-output head (a HF
    `...ForSequenceClassification` checkpoint); the score of a text is the head's output at its last token.
    """

    data: DataSpec = Field(description="Preference pairs: `builtin:preferences` or rows with prompt/chosen/rejected.")
    train: TrainSpec = Field(description="Optimisation settings; `batch_size` counts pairs.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters (and the new head) instead of all weights.")
    margin: float = Field(
        0.0,
        ge=0,
        description="Reward gap the loss asks for between chosen and rejected (Llama 2's margin loss); "
        "a row's own numeric `margin` field, when it has one, takes precedence.",
    )

    _check_data = field_validator("data")(pairs_only)
