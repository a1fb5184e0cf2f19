"""Recipe section of `kind: ppo` (no torch): PPO for language models with a value head and a KL-shaped
reward; the stage is `posttrain.stages.ppo`."""

from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.config.rl import KLSpec, RLConfig
from posttrain.config.stages import register_stage_config
from posttrain.registry import ADVANTAGE_ESTIMATORS, check_plug_in


@register_stage_config("ppo")
class PPOConfig(RLConfig):
    """PPO for language models (Ouyang et al., arXiv 2203.02155; Ziegler et al., arXiv 1909.08593): a value head
    on the policy, per-token reward -beta * KL with the sequence reward added at the last token, GAE, several
    epochs of clipped updates per batch of rollouts."""

    group_size: int = Field(1, ge=1, description="Completions sampled per prompt.")
    policy_loss: str = Field(
        "ppo_clip",
        description="`ppo_clip`: the clipped surrogate (arXiv 1707.06347 eq. 7), or any registered policy loss or "
        "`path/to/file.py:function` taking the same keywords; the value loss is added to it.",
    )
    advantage: str = Field(
        "gae",
        description="`gae` (arXiv 1506.02438 eq. 16), or a token-level estimator of your own "
        "(`path/to/file.py:function` taking `rewards_BT`, `values_BT`, `mask_BT`, `gamma`, `lam` and returning "
        "advantages and returns).",
    )
    kl: KLSpec = Field(
        default_factory=lambda: KLSpec(coef=0.05, estimator="k1"),
        description="KL penalty in the per-token reward.",
    )
    gamma: float = Field(1.0, gt=0, le=1, description="Discount factor of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (arXiv 1506.02438 eq. 16).")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")
    value_clip: float = Field(0.2, gt=0, description="Clip range of the value prediction around its rollout-time value.")
    whiten_advantages: bool = Field(True, description="Normalise advantages to zero mean and unit variance per batch.")
    value_lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of the value head (same schedule); default train.lr. The head starts "
        "from scratch while the policy starts trained: at the policy's small rate it barely learns in a short stage.",
    )
    normalize_reward: bool = Field(
        True,
        description="Shift and scale the sequence reward by its mean and standard deviation over the first rollout "
        "batch, then keep those constants (the reward model normalised to mean 0, variance 1 under the starting "
        "policy, Ziegler et al. arXiv 1909.08593 §2.2): a reward model's offset is arbitrary, and the value head "
        "starts near 0.",
    )

    @field_validator("advantage")
    @classmethod
    def _token_advantage(cls, value: str) -> str:
        return check_plug_in(ADVANTAGE_ESTIMATORS, value, "token")
