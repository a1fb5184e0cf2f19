"""`kind: ppo`, PPO for language models with a KL-shaped reward (Ziegler et al., arXiv 1909.08593; Ouyang et
al., arXiv 2203.02155): a value head on the policy, GAE, clipped policy and value losses, fixed or adaptive
KL coefficient; the frozen reference is the starting model.

What makes it PPO is `PPOObjective` (the shaped reward, the advantage over it, the value loss); the rollout,
reward, KL controller and update machinery is the shared RL engine (`posttrain.rl`). See
`posttrain.config.ppo.PPOConfig`. The saved checkpoint is the policy alone (a plain causal LM); the value
head is discarded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms import clipped_value_loss, masked_mean, masked_sum
from posttrain.config.ppo import PPOConfig
from posttrain.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from posttrain.rl.engine import RLEngine
from posttrain.rl.objective import Advantages, Experience, Metrics, SumOverProcesses, clip_settings, resolve_plug_in
from posttrain.rl.policy import CompletionScores
from posttrain.rl.setup import build_engine, load_policy
from posttrain.stages.base import Stage, StageContext, register_stage

_ADVANTAGE_KEYWORDS = ("rewards_BT", "values_BT", "mask_BT", "gamma", "lam")
_LOSS_KEYWORDS = (
    "logprobs_BT", "old_logprobs_BT", "advantages_BT", "mask_BT", "clip_eps", "clip_eps_high", "dual_clip",
    "aggregation", "max_length",
)


class PPOObjective:
    """PPO's two hooks (Ziegler et al., arXiv 1909.08593 §2; Ouyang et al., arXiv 2203.02155 eq. 2).

    Per-token reward ``r_t = -beta * KL_t`` plus the sequence reward at the completion's last token; the
    recipe's `advantage` (GAE, arXiv 1506.02438 eq. 16) over the value head's estimates; loss = the recipe's
    `policy_loss` (clipped surrogate, arXiv 1707.06347 eq. 7) + ``value_coef`` * clipped value loss. With
    ``normalize_reward`` the sequence rewards are shifted and scaled by the first batch's statistics, which
    are kept (and saved) for the rest of the stage.
    """

    uses_values = True

    def __init__(self, config: PPOConfig, recipe_dir: Path | None = None):
        self.config = config
        self.estimator = resolve_plug_in(ADVANTAGE_ESTIMATORS, config.advantage, recipe_dir, _ADVANTAGE_KEYWORDS)
        self.policy_loss = resolve_plug_in(POLICY_LOSSES, config.policy_loss, recipe_dir, _LOSS_KEYWORDS)
        self.reward_stats: tuple[float, float] | None = None  # (mean, std) of the first batch's rewards

    def advantages(
        self, experience: Experience, kl_BC: torch.Tensor, kl_coef: float, sum_over_processes: SumOverProcesses
    ) -> Advantages:
        """Whitening and the reward statistics use the whole batch across processes (``sum_over_processes``)."""
        if experience.old_values_BC is None:
            raise ValueError("PPO needs the rollout's value estimates (old_values_BC)")
        mask_BC = experience.loss_mask_BC
        rewards_B = experience.rewards_B
        if self.config.normalize_reward:
            if self.reward_stats is None:
                self.reward_stats = reward_stats(rewards_B, ~experience.excluded_B, sum_over_processes)
            rewards_B = normalize_reward(rewards_B, *self.reward_stats)
        rewards_BC, kl_BC = token_rewards(experience, kl_BC, kl_coef, rewards_B)
        advantages_BC, returns_BC = self.estimator(
            rewards_BT=rewards_BC, values_BT=experience.old_values_BC, mask_BT=mask_BC,
            gamma=self.config.gamma, lam=self.config.lam,
        )
        if self.config.whiten_advantages:
            advantages_BC = whiten(advantages_BC, mask_BC, sum_over_processes)
        has_tokens_B = mask_BC.any(dim=1)
        metrics = {
            "kl_penalty": float(masked_mean(-kl_coef * masked_sum(kl_BC, mask_BC, dim=1), has_tokens_B)),
            "returns_mean": float(masked_mean(returns_BC, mask_BC)),
        }
        return Advantages(advantages_BC, returns_BC, metrics)

    def loss(self, batch: Experience, scores: CompletionScores, kl_coef: float) -> tuple[torch.Tensor, Metrics]:
        """The KL is in the reward, not the loss: ``kl_coef`` is unused here."""
        policy_loss, metrics = self.policy_loss(
            logprobs_BT=scores.logprobs_BC,
            old_logprobs_BT=batch.old_logprobs_BC,
            advantages_BT=batch.advantages,
            mask_BT=batch.loss_mask_BC,
            **clip_settings(self.config),
        )
        # aggregated as the policy loss is: the engine weights each micro-batch by that aggregation's count
        value_loss, value_metrics = clipped_value_loss(
            scores.values_BC, batch.old_values_BC, batch.returns_BC, batch.loss_mask_BC, self.config.value_clip,
            self.config.loss_aggregation, self.config.generation.max_new_tokens,
        )
        metrics = {**metrics, **value_metrics, "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach()}
        return policy_loss + self.config.value_coef * value_loss, metrics

    def state_dict(self) -> dict[str, Any]:
        """The reward normalisation's constants, for resumable checkpoints."""
        return {"reward_stats": self.reward_stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict`."""
        stats = state.get("reward_stats")
        self.reward_stats = tuple(stats) if stats is not None else None


def token_rewards(
    experience: Experience, kl_BC: torch.Tensor, kl_coef: float, rewards_B: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards_BC, kl_BC)``: the KL-shaped per-token reward ``-kl_coef * KL_t`` plus the sequence reward at
    the last token, and the per-token KL zeroed outside the loss mask. ``rewards_B`` replaces the experience's
    sequence rewards (the normalised ones)."""
    rewards_B = experience.rewards_B if rewards_B is None else rewards_B
    mask_BC = experience.loss_mask_BC
    kl_BC = torch.where(mask_BC, kl_BC, torch.zeros_like(kl_BC))
    rewards_BC = -kl_coef * kl_BC
    last_B = (experience.completion_mask_BC.sum(dim=1) - 1).clamp(min=0)
    rewards_BC = rewards_BC.scatter_add(1, last_B[:, None], rewards_B[:, None].to(rewards_BC.dtype))
    return torch.where(mask_BC, rewards_BC, torch.zeros_like(rewards_BC)), kl_BC


def reward_stats(rewards_B: torch.Tensor, kept_B: torch.Tensor, sum_over_processes: SumOverProcesses) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation of the kept rewards of the global batch."""
    kept_rewards_B = torch.where(kept_B, rewards_B, torch.zeros_like(rewards_B)).double()
    count, total, squares = sum_over_processes(
        torch.stack([kept_B.sum().double(), kept_rewards_B.sum(), (kept_rewards_B**2).sum()])
    ).tolist()
    mean = total / max(count, 1.0)
    variance = (squares - count * mean**2) / max(count - 1, 1.0)
    return mean, math.sqrt(max(variance, 0.0))


def normalize_reward(rewards_B: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(r - mean) / std`` with the constants of the starting policy's rewards (Ziegler et al., arXiv
    1909.08593 §2.2: the reward model normalised to mean 0 and variance 1 under the initial policy). A
    constant first batch (std 0) is only shifted."""
    return (rewards_B - mean) / (std if std > 1e-8 else 1.0)


def whiten(values_BC: torch.Tensor, mask_BC: torch.Tensor, sum_over_processes: SumOverProcesses) -> torch.Tensor:
    """`posttrain.algorithms.masked_whiten` with the mean and (unbiased) variance of the whole batch across
    processes, in float64; 0 outside the mask."""
    kept_BC = torch.where(mask_BC, values_BC, torch.zeros_like(values_BC)).double()
    count, total, squares = sum_over_processes(torch.stack([mask_BC.sum().double(), kept_BC.sum(), (kept_BC**2).sum()]))
    mean = total / count.clamp(min=1)
    variance = (squares - count * mean**2) / (count - 1).clamp(min=1)
    whitened_BC = ((values_BC.double() - mean) * torch.rsqrt(variance + 1e-8)).to(values_BC.dtype)
    return torch.where(mask_BC, whitened_BC, torch.zeros_like(whitened_BC))


@register_stage("ppo")
class PPOStage(Stage):
    """PPO on the shared RL engine: the policy starts from the input checkpoint (full weights or LoRA)."""

    config: PPOConfig

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.model, self.tokenizer = load_policy(context)

    def build_engine(self) -> RLEngine:
        """The engine with this stage's prompts, reward, objective and held-out evaluation."""
        return build_engine(self.context, self.model, self.tokenizer, PPOObjective(self.config, self.context.recipe_dir))

    def train(self) -> dict[str, Any]:
        engine = self.build_engine()
        summary = engine.train()
        self.model = engine.policy
        return {**summary, "skipped_data_rows": engine.skipped_data_rows}
