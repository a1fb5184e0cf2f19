"""Recipe sections of the preference stages: a pairwise reward model and DPO (no torch).

Both read preference pairs (`prompt`, `chosen`, `rejected`) from `builtin:preferences`, a JSONL / JSON /
Parquet file or a `datasets` dataset; see `posttrain.data.preferences` for the accepted row layouts.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.config.common import DataSpec, LoraSpec, TrainSpec
from posttrain.config.stages import StageConfig, register_stage_config


def _pairs_only(spec: DataSpec) -> DataSpec:
    """Preference rows have one layout of their own; the chat/text `format:` choices do not apply."""
    if spec.format != "auto":
        raise ValueError(
            f"preference data is read as `prompt`/`chosen`/`rejected` rows; remove `format: {spec.format}`"
        )
    return spec


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

    _check_data = field_validator("data")(_pairs_only)


@register_stage_config("dpo")
class DPOConfig(StageConfig):
    """Direct preference optimisation of a causal LM against a frozen reference (the starting model).

    The reference log-probabilities are computed once, before the first step, from the starting weights
    (with LoRA: the same model with its adapters disabled), so no second model stays in memory.
    """

    data: DataSpec = Field(description="Preference pairs: `builtin:preferences` or rows with prompt/chosen/rejected.")
    train: TrainSpec = Field(description="Optimisation settings; `batch_size` counts pairs.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    beta: float = Field(
        0.1, gt=0, description="Inverse temperature of the implicit reward; larger keeps the policy nearer the reference."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed rate of flipped labels (conservative DPO); 0 is plain DPO."
    )
    nll_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the chosen responses' length-normalised NLL added to the loss (DPO+NLL, as in "
        "Iterative RPO and TRL's `rpo_alpha`); keeps correct answers likely when pairs differ in correctness. "
        "0 is plain DPO.",
    )

    _check_data = field_validator("data")(_pairs_only)
