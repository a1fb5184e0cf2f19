"""Recipe section of `kind: ai_judge` (no torch): preference pairs labelled by an AI judge (the RLAIF stages are
described in `posttrain.config.rlaif`); the stage is `posttrain.stages.ai_judge`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from posttrain.config.common import DataSpec
from posttrain.config.rl import GenerationSpec
from posttrain.config.rlaif import MODEL_REFERENCE, RoleSettings
from posttrain.config.stages import StageConfig, register_stage_config


@register_stage_config("ai_judge")
class AIJudgeConfig(StageConfig):
    """AI-labelled preference pairs: per prompt the policy samples `candidates` responses; each neighbouring
    pair is judged under a sampled principle in both orders and labelled only when both orders agree (ties
    are dropped and counted). Writes the output `pairs` (prompt/chosen/rejected plus the principle and the
    judge's margins); with program-checkable principles the judge's agreement with the ground truth is
    logged."""

    outputs: ClassVar[tuple[str, ...]] = ("pairs",)

    constitution: str = Field(description="Constitution YAML file (relative to the recipe's folder): principles and the judge template.")
    data: DataSpec = Field(description="Prompts (same layouts as RL stages).")
    judge: str = Field("policy", description=f"The judge: {MODEL_REFERENCE}.")
    candidates: int = Field(2, ge=2, description="Responses sampled per prompt; pairs are (1, 2), (3, 4), ...")
    generation: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(max_new_tokens=32, temperature=1.0),
        description="How the policy samples the candidate responses.",
    )
    margin: float = Field(0.0, ge=0, description="Both orders must prefer the same response by more than this log-probability margin.")
    roles: RoleSettings = Field(default_factory=RoleSettings, description="Batching of the judge.")
