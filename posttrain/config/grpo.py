"""Recipe section of `kind: grpo` (no torch): group relative policy optimisation; the stage is
`posttrain.stages.grpo`."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from posttrain.config.rl import KLSpec, RLConfig
from posttrain.config.stages import register_stage_config
from posttrain.registry import ADVANTAGE_ESTIMATORS, check_plug_in


@register_stage_config("grpo")
class GRPOConfig(RLConfig):
    """Group relative policy optimisation (Shao et al., arXiv 2402.03300 §4.1): `group_size` completions per
    prompt, each completion's advantage its reward relative to its group, the KL to the reference in the loss."""

    group_size: int = Field(4, ge=2, description="Completions sampled per prompt (G).")
    policy_loss: str = Field(
        "grpo",
        description="`grpo`: the clipped surrogate plus beta * KL per token (arXiv 2402.03300 eq. 3), or any "
        "registered policy loss or `path/to/file.py:function` taking the same keywords.",
    )
    advantage: str = Field(
        "grpo",
        description="`grpo`: (r - group mean) / group std; `dr_grpo`: r - group mean, no std division (Dr. GRPO, "
        "arXiv 2503.20783; pair it with loss_aggregation: seq-mean-token-sum-norm); `rloo`: r - mean of the "
        "other completions of the prompt (arXiv 2402.14740); or an outcome estimator of your own "
        "(`path/to/file.py:function` taking `rewards_B` and `group_size`).",
    )
    kl: KLSpec = Field(
        default_factory=lambda: KLSpec(coef=0.0, estimator="k3"),
        description="KL to the reference as a loss term; default beta 0 (logged, not penalised).",
    )

    @model_validator(mode="after")
    def _fixed_kl_only(self) -> "GRPOConfig":
        if self.kl.controller != "fixed":
            raise ValueError("GRPO puts the KL in the loss with a fixed coefficient; `kl.controller: adaptive` is for PPO")
        return self

    @field_validator("advantage")
    @classmethod
    def _outcome_advantage(cls, value: str) -> str:
        return check_plug_in(ADVANTAGE_ESTIMATORS, value, "outcome")
