"""Recipe section of `kind: grpo` (no torch): group relative policy optimisation; the stage is
`posttrain.stages.grpo`."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from posttrain.config.common import Strict
from posttrain.config.rl import KLSpec, RLConfig
from posttrain.config.stages import register_stage_config
from posttrain.registry import ADVANTAGE_ESTIMATORS, check_plug_in


class DAPOSpec(Strict):
    """DAPO's batch shaping (Yu et al., arXiv 2503.14476); with `clip_eps_high` (clip-higher, §3.1) and
    `loss_aggregation: token-mean` (§3.3) it is the whole of DAPO."""

    dynamic_sampling: bool = Field(
        True,
        description="Drop groups whose rewards are all equal (no learning signal) and refill the batch with groups "
        "of further prompts (§3.2); the dropped groups and the extra completions are logged.",
    )
    max_extra_rounds: int = Field(
        2, ge=0,
        description="dynamic_sampling: at most this many extra generation rounds of `prompts_per_step` prompts per "
        "step; if the batch is still short, the dropped groups fill it, out of the loss.",
    )
    overlong_filter: bool = Field(True, description="Truncated completions (no end token) are left out of the loss (§3.4).")
    overlong_buffer: int = Field(
        0, ge=0,
        description="Soft overlong punishment (§3.4, eq. 13): over the last N tokens of `generation.max_new_tokens` "
        "the reward falls linearly to -overlong_penalty; 0 turns it off.",
    )
    overlong_penalty: float = Field(1.0, gt=0, description="Size of the overlong punishment at the full budget.")


@register_stage_config("grpo")
class GRPOConfig(RLConfig):
    """Group relative policy optimisation (Shao et al., arXiv 2402.03300 §4.1): `group_size` completions per
    prompt, each completion's advantage its reward relative to its group, the KL to the reference in the loss."""

    group_size: int = Field(4, ge=2, description="Completions sampled per prompt (G).")
    policy_loss: str = Field(
        "grpo",
        description="`grpo`: the clipped surrogate plus beta * KL per token (arXiv 2402.03300 eq. 3); `gspo`: the "
        "same on a length-normalised sequence ratio, clipped per completion (arXiv 2507.18071; use tiny clip ranges, "
        "e.g. clip_eps 3e-4, clip_eps_high 4e-4, and loss_aggregation seq-mean-token-mean); `cispo`: REINFORCE with "
        "a clipped stop-gradient importance weight (arXiv 2506.13585; e.g. clip_eps 1.0, clip_eps_high 4.0); or any "
        "registered policy loss or `path/to/file.py:function` taking the same keywords.",
    )
    advantage: str = Field(
        "grpo",
        description="`grpo`: (r - group mean) / group std; `dr_grpo`: r - group mean, no std division (Dr. GRPO, "
        "arXiv 2503.20783; pair it with loss_aggregation: seq-mean-token-sum-norm); `rloo`: r - mean of the "
        "other completions of the prompt (arXiv 2402.14740); `reinforce_pp`: (r - batch mean) / batch std over the "
        "global batch, `reinforce_pp_baseline`: r - group mean, then normalised over the global batch (REINFORCE++, "
        "arXiv 2501.03262); or an outcome estimator of your own (`path/to/file.py:function` taking `rewards_B` and "
        "`group_size`, and `valid_B` / `sum_over_processes` if it wants them).",
    )
    kl: KLSpec = Field(
        default_factory=lambda: KLSpec(coef=0.0, estimator="k3"),
        description="KL to the reference as a loss term; default beta 0 (logged, not penalised).",
    )
    dapo: DAPOSpec | None = Field(
        None, description="DAPO's dynamic sampling, overlong filtering and overlong punishment (arXiv 2503.14476); null: off."
    )

    @model_validator(mode="after")
    def _fixed_kl_only(self) -> "GRPOConfig":
        if self.kl.controller != "fixed":
            raise ValueError("GRPO puts the KL in the loss with a fixed coefficient; `kl.controller: adaptive` is for PPO")
        if self.policy_loss == "cispo" and self.dual_clip is not None:
            raise ValueError("dual_clip does not apply to policy_loss cispo: its importance weight is clipped already (clip_eps_high)")
        if self.dapo is not None and self.dapo.overlong_buffer > self.generation.max_new_tokens:
            raise ValueError(
                f"dapo.overlong_buffer ({self.dapo.overlong_buffer}) is longer than generation.max_new_tokens "
                f"({self.generation.max_new_tokens})"
            )
        return self

    @field_validator("advantage")
    @classmethod
    def _outcome_advantage(cls, value: str) -> str:
        return check_plug_in(ADVANTAGE_ESTIMATORS, value, "outcome")
