"""`kind: grpo`, group relative policy optimisation (Shao et al., arXiv 2402.03300 §4.1): several completions
per prompt, advantages relative to the prompt's group, the KL to the frozen starting model in the loss.

What makes it GRPO is `GRPOObjective` (the advantage over a group and the loss with its KL term); the
rollout, reward and update machinery is the shared RL engine (`posttrain.rl`). Dr. GRPO and RLOO are
`advantage:` choices of this stage; see `posttrain.config.grpo.GRPOConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms import masked_mean
from posttrain.algorithms.dapo import informative_groups
from posttrain.config.grpo import GRPOConfig
from posttrain.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from posttrain.rl.engine import RLEngine
from posttrain.rl.objective import (
    Advantages, Experience, Metrics, SumOverProcesses, clip_settings, optional_keywords, resolve_plug_in,
)
from posttrain.rl.policy import CompletionScores
from posttrain.rl.setup import build_engine, load_policy
from posttrain.stages.base import Stage, StageContext, register_stage

_ADVANTAGE_KEYWORDS = ("rewards_B", "group_size")
_OPTIONAL_ADVANTAGE_KEYWORDS = ("valid_B", "sum_over_processes")
_LOSS_KEYWORDS = (
    "logprobs_BT", "old_logprobs_BT", "advantages_BT", "mask_BT", "ref_logprobs_BT", "beta", "kl_kind",
    "clip_eps", "clip_eps_high", "dual_clip", "aggregation", "max_length",
)


class GRPOObjective:
    """GRPO's two hooks: outcome advantages within each prompt's group, and ``loss = clipped surrogate +
    beta * KL(policy || reference)`` per token (arXiv 2402.03300 eq. 3) with the recipe's `policy_loss`.

    A completion excluded by an infrastructure error stays out of its group's statistics (``valid_B``) and
    gets advantage 0 and no loss. An estimator of the user's own that does not take ``valid_B`` sees the
    excluded completion with its group's mean valid reward instead (so the group mean is that of the valid
    completions); its advantage is then set to 0.
    """

    uses_values = False

    def __init__(self, config: GRPOConfig, recipe_dir: Path | None = None):
        self.config = config
        self.group_size = config.group_size
        self.estimator = resolve_plug_in(ADVANTAGE_ESTIMATORS, config.advantage, recipe_dir, _ADVANTAGE_KEYWORDS)
        self.policy_loss = resolve_plug_in(POLICY_LOSSES, config.policy_loss, recipe_dir, _LOSS_KEYWORDS)
        self.optional = optional_keywords(self.estimator, _OPTIONAL_ADVANTAGE_KEYWORDS)

    def advantages(
        self, experience: Experience, kl_BC: torch.Tensor, kl_coef: float, sum_over_processes: SumOverProcesses
    ) -> Advantages:
        """Groups never span processes; an estimator with global-batch statistics (REINFORCE++) takes the
        collective."""
        rewards_GS = experience.rewards_B.view(-1, self.group_size)
        valid_GS = ~experience.excluded_B.view(-1, self.group_size)
        given = {"valid_B": valid_GS.reshape(-1), "sum_over_processes": sum_over_processes}
        keywords = {name: given[name] for name in self.optional}
        if "valid_B" not in keywords:  # a user's estimator: the excluded completion takes its group's mean
            group_mean_G1 = masked_mean(rewards_GS, valid_GS, dim=1)[:, None]
            rewards_GS = torch.where(valid_GS, rewards_GS, group_mean_G1)
        advantages_B = self.estimator(rewards_B=rewards_GS.reshape(-1), group_size=self.group_size, **keywords)
        advantages_B = torch.where(valid_GS.reshape(-1), advantages_B, torch.zeros_like(advantages_B))
        zero_variance_G = ~informative_groups(experience.rewards_B, valid_GS.reshape(-1), self.group_size)
        return Advantages(advantages_B, metrics={"zero_variance_groups": float(zero_variance_G.float().mean())})

    def loss(self, batch: Experience, scores: CompletionScores, kl_coef: float) -> tuple[torch.Tensor, Metrics]:
        return self.policy_loss(
            logprobs_BT=scores.logprobs_BC,
            old_logprobs_BT=batch.old_logprobs_BC,
            advantages_BT=batch.advantages,
            mask_BT=batch.loss_mask_BC,
            ref_logprobs_BT=batch.ref_logprobs_BC,
            beta=kl_coef,
            kl_kind=self.config.kl.estimator,
            **clip_settings(self.config),
        )

    def state_dict(self) -> dict[str, Any]:
        """Nothing changes during training (beta is fixed)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict` (nothing)."""


@register_stage("grpo")
class GRPOStage(Stage):
    """GRPO on the shared RL engine: the policy starts from the input checkpoint (full weights or LoRA)."""

    config: GRPOConfig

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.model, self.tokenizer = load_policy(context)

    def build_engine(self) -> RLEngine:
        """The engine with this stage's prompts, reward, objective and held-out evaluation."""
        return build_engine(self.context, self.model, self.tokenizer, GRPOObjective(self.config, self.context.recipe_dir))

    def train(self) -> dict[str, Any]:
        engine = self.build_engine()
        summary = engine.train()
        self.model = engine.policy
        return {**summary, "skipped_data_rows": engine.skipped_data_rows}
