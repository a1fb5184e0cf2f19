"""Recipe section of `kind: dpo` (no torch): direct preference optimisation of a causal LM on preference pairs
(`prompt`, `chosen`, `rejected`; see `posttrain.data.preferences` for the row layouts); the stage is
`posttrain.stages.dpo`."""

from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.config.common import DataSpec, LoraSpec, TrainSpec, pairs_only
from posttrain.config.stages import StageConfig, register_stage_config


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

    _check_data = field_validator("data")(pairs_only)
