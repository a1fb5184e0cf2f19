"""Recipe section of `kind: sft` (no torch): supervised fine-tuning on chat or prompt/completion rows; the stage is
`posttrain.stages.sft`."""

from __future__ import annotations

from pydantic import Field

from posttrain.config.common import DataSpec, LoraSpec, TrainSpec
from posttrain.config.stages import StageConfig, register_stage_config


@register_stage_config("sft")
class SFTConfig(StageConfig):
    """Supervised fine-tuning on chat or prompt/completion data; loss on assistant tokens only."""

    data: DataSpec = Field(description="Chat `messages` or `prompt`/`completion` rows.")
    train: TrainSpec = Field(description="Optimisation settings.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    loss_on_prompt: bool = Field(False, description="Also train on user/system tokens (default: assistant only).")
