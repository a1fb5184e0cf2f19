"""Stage kinds. Importing this package registers the built-in ones."""

from posttrain.stages import ai_judge, constitutional, curate, dpo, grpo, ppo, pretrain, reward_model, sft  # noqa: F401
from posttrain.stages.base import Stage, StageContext, register_stage, stage_class

__all__ = ["Stage", "StageContext", "register_stage", "stage_class"]
