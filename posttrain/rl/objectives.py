"""What PPO and GRPO do differently on one shared engine: the advantage and the loss.

An objective has two methods the engine calls:

- ``prepare(experience)``: after rollout and reward, fills in ``experience.advantages`` (and PPO's
  ``returns_BC``) and returns metrics.
- ``loss(batch, scores)``: on a mini-batch, the scalar to minimise and its metrics.

Everything numeric is a pure function of `posttrain.algorithms`; the objectives only choose which and
with what settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from posttrain.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    clipped_value_loss,
    gae_advantages,
    get_advantage_estimator,
    get_policy_loss,
    kl_estimate,
    masked_mean,
    masked_sum,
    masked_whiten,
)
from posttrain.config.rl import GRPOConfig, PPOConfig, RLConfig
from posttrain.rl.policy import CompletionScores

Metrics = dict[str, torch.Tensor | float]


def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


@dataclass
class Experience:
    """One batch of rollouts with what the update needs; row i of every tensor is the same completion.

    Completions of one prompt are contiguous rows (``group_size`` of them).
    """

    sequences_BS: torch.Tensor
    attention_mask_BS: torch.Tensor
    position_ids_BS: torch.Tensor
    completion_ids_BC: torch.Tensor
    completion_mask_BC: torch.Tensor  # generated tokens (end token included)
    loss_mask_BC: torch.Tensor  # the tokens that are trained on: completion tokens of non-excluded rows
    sampler_logprobs_BC: torch.Tensor
    old_logprobs_BC: torch.Tensor
    ref_logprobs_BC: torch.Tensor
    rewards_B: torch.Tensor
    excluded_B: torch.Tensor
    old_values_BC: torch.Tensor | None = None
    advantages: torch.Tensor | None = None  # (B,) for outcome advantages, (B, C) for GAE
    returns_BC: torch.Tensor | None = None

    def rows(self, index_R: torch.Tensor) -> "Experience":
        """The experience of rows ``index_R`` only."""
        return replace(self, **{f.name: _take(getattr(self, f.name), index_R) for f in fields(self)})


def _take(value: Any, index_R: torch.Tensor) -> Any:
    return value[index_R] if isinstance(value, torch.Tensor) else value


def _clip_settings(config: RLConfig) -> dict[str, Any]:
    return {
        "clip_eps": config.clip_eps,
        "clip_eps_high": config.clip_eps_high,
        "dual_clip": config.dual_clip,
        "aggregation": config.loss_aggregation,
        "max_length": config.generation.max_new_tokens,
    }


class GRPOObjective:
    """GRPO (Shao et al., arXiv 2402.03300 eq. 3): outcome advantages within each prompt's group and
    ``loss = clipped surrogate + beta * KL(policy || reference)`` per token.

    A completion excluded by an infrastructure error gets its group's mean valid reward in the group
    statistics (so the group mean is that of the valid completions) and no loss.
    """

    uses_values = False
    sum_over_processes = staticmethod(_identity)  # groups never span processes: nothing to combine

    def __init__(self, config: GRPOConfig):
        self.config = config
        self.group_size = config.group_size
        self.beta = config.kl.coef
        self.policy_loss = get_policy_loss("grpo")
        if config.advantage == "rloo":
            estimator = get_advantage_estimator("rloo")
            self.advantage = lambda rewards_B: estimator(rewards_B=rewards_B, group_size=self.group_size)
        else:
            estimator = get_advantage_estimator("grpo")
            normalize_std = config.advantage == "grpo"
            self.advantage = lambda rewards_B: estimator(
                rewards_B=rewards_B, group_size=self.group_size, normalize_std=normalize_std
            )

    def prepare(self, experience: Experience) -> Metrics:
        rewards_GS = experience.rewards_B.view(-1, self.group_size)
        valid_GS = ~experience.excluded_B.view(-1, self.group_size)
        group_mean_G1 = masked_mean(rewards_GS, valid_GS, dim=1)[:, None]
        imputed_GS = torch.where(valid_GS, rewards_GS, group_mean_G1)
        experience.advantages = self.advantage(imputed_GS.reshape(-1))
        spread_G = (imputed_GS.max(dim=1).values - imputed_GS.min(dim=1).values)
        return {"zero_variance_groups": float((spread_G < 1e-6).float().mean())}

    def loss(self, batch: Experience, scores: CompletionScores) -> tuple[torch.Tensor, Metrics]:
        return self.policy_loss(
            logprobs_BT=scores.logprobs_BC,
            old_logprobs_BT=batch.old_logprobs_BC,
            advantages_BT=batch.advantages,
            mask_BT=batch.loss_mask_BC,
            ref_logprobs_BT=batch.ref_logprobs_BC,
            beta=self.beta,
            kl_kind=self.config.kl.estimator,
            **_clip_settings(self.config),
        )

    def after_rollout(self, experience: Experience) -> Metrics:
        return {"kl_coef": self.beta}

    def state_dict(self) -> dict[str, float]:
        """What changes during training (nothing: beta is fixed); for resumable checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores `state_dict`."""


class PPOObjective:
    """PPO for language models (Ziegler et al., arXiv 1909.08593 §2; Ouyang et al., arXiv 2203.02155 eq. 2).

    Per-token reward ``r_t = -beta * KL_t`` plus the sequence reward at the completion's last token; GAE
    (arXiv 1506.02438 eq. 16) over the value head's estimates; loss = clipped surrogate (arXiv 1707.06347
    eq. 7) + ``value_coef`` * clipped value loss. With an adaptive controller beta follows the KL per
    completion towards its target.
    """

    uses_values = True
    # the engine sets this to a sum over processes, so whitening and the adaptive KL see the global batch
    sum_over_processes = staticmethod(_identity)

    def __init__(self, config: PPOConfig):
        self.config = config
        kl = config.kl
        self.controller = (
            AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.controller == "adaptive" else FixedKLController(kl.coef)
        )
        self.policy_loss = get_policy_loss("ppo_clip")
        self.reward_stats: tuple[float, float] | None = None  # (mean, std) of the first batch's rewards

    def token_rewards(self, experience: Experience, rewards_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rewards_BC, kl_BC)``: the KL-shaped per-token reward and the per-token KL estimate.
        ``rewards_B`` replaces the experience's sequence rewards (the normalised ones)."""
        rewards_B = experience.rewards_B if rewards_B is None else rewards_B
        mask_BC = experience.loss_mask_BC
        kl_BC = kl_estimate(experience.old_logprobs_BC, experience.ref_logprobs_BC, self.config.kl.estimator)
        kl_BC = torch.where(mask_BC, kl_BC, torch.zeros_like(kl_BC))
        rewards_BC = -self.controller.kl_coef * kl_BC
        last_B = (experience.completion_mask_BC.sum(dim=1) - 1).clamp(min=0)
        rewards_BC = rewards_BC.scatter_add(1, last_B[:, None], rewards_B[:, None].to(rewards_BC.dtype))
        return torch.where(mask_BC, rewards_BC, torch.zeros_like(rewards_BC)), kl_BC

    def prepare(self, experience: Experience) -> Metrics:
        if experience.old_values_BC is None:
            raise ValueError("PPO needs the rollout's value estimates (old_values_BC)")
        mask_BC = experience.loss_mask_BC
        rewards_B = experience.rewards_B
        if self.config.normalize_reward:
            if self.reward_stats is None:
                self.reward_stats = self._reward_stats(rewards_B, ~experience.excluded_B)
            rewards_B = normalize_reward(rewards_B, *self.reward_stats)
        rewards_BC, kl_BC = self.token_rewards(experience, rewards_B)
        advantages_BC, returns_BC = gae_advantages(
            rewards_BC, experience.old_values_BC, mask_BC, self.config.gamma, self.config.lam
        )
        if self.config.whiten_advantages:
            advantages_BC = self._whiten(advantages_BC, mask_BC)
        experience.advantages, experience.returns_BC = advantages_BC, returns_BC
        has_tokens_B = mask_BC.any(dim=1)
        return {
            "kl_penalty": float(masked_mean(-self.controller.kl_coef * masked_sum(kl_BC, mask_BC, dim=1), has_tokens_B)),
            "returns_mean": float(masked_mean(returns_BC, mask_BC)),
        }

    def _reward_stats(self, rewards_B: torch.Tensor, kept_B: torch.Tensor) -> tuple[float, float]:
        """Mean and standard deviation of the kept rewards of the global batch."""
        kept_rewards_B = torch.where(kept_B, rewards_B, torch.zeros_like(rewards_B)).double()
        count, total, squares = self.sum_over_processes(
            torch.stack([kept_B.sum().double(), kept_rewards_B.sum(), (kept_rewards_B**2).sum()])
        ).tolist()
        mean = total / max(count, 1.0)
        variance = (squares - count * mean**2) / max(count - 1, 1.0)
        return mean, math.sqrt(max(variance, 0.0))

    def _whiten(self, values_BC: torch.Tensor, mask_BC: torch.Tensor) -> torch.Tensor:
        """`masked_whiten` with the mean and (unbiased) variance of the whole batch across processes."""
        if self.sum_over_processes is _identity:
            return masked_whiten(values_BC, mask_BC)
        kept_BC = torch.where(mask_BC, values_BC, torch.zeros_like(values_BC)).double()
        count, total, squares = self.sum_over_processes(torch.stack([mask_BC.sum().double(), kept_BC.sum(), (kept_BC**2).sum()]))
        mean = total / count.clamp(min=1)
        variance = (squares - count * mean**2) / (count - 1).clamp(min=1)
        whitened_BC = ((values_BC.double() - mean) * torch.rsqrt(variance + 1e-8)).to(values_BC.dtype)
        return torch.where(mask_BC, whitened_BC, torch.zeros_like(whitened_BC))

    def loss(self, batch: Experience, scores: CompletionScores) -> tuple[torch.Tensor, Metrics]:
        policy_loss, metrics = self.policy_loss(
            logprobs_BT=scores.logprobs_BC,
            old_logprobs_BT=batch.old_logprobs_BC,
            advantages_BT=batch.advantages,
            mask_BT=batch.loss_mask_BC,
            **_clip_settings(self.config),
        )
        value_loss, value_metrics = clipped_value_loss(
            scores.values_BC, batch.old_values_BC, batch.returns_BC, batch.loss_mask_BC, self.config.value_clip
        )
        metrics = {**metrics, **value_metrics, "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach()}
        return policy_loss + self.config.value_coef * value_loss, metrics

    def after_rollout(self, experience: Experience) -> Metrics:
        """Updates beta from this batch's KL per completion (sum over tokens, mean over completions)."""
        mask_BC = experience.loss_mask_BC
        kl_BC = kl_estimate(experience.old_logprobs_BC, experience.ref_logprobs_BC, self.config.kl.estimator)
        per_completion_B = masked_sum(kl_BC, mask_BC, dim=1)
        has_tokens_B = mask_BC.any(dim=1)
        totals = self.sum_over_processes(torch.stack([masked_sum(per_completion_B, has_tokens_B), has_tokens_B.sum().to(kl_BC.dtype)]))
        kl = float(totals[0] / totals[1].clamp(min=1))
        used = self.controller.kl_coef
        self.controller.update(kl, n_steps=int(mask_BC.shape[0]))
        return {"kl_coef": used}

    def state_dict(self) -> dict[str, Any]:
        """The KL controller's state (an adaptive beta moves) and the reward normalisation's constants; for
        resumable checkpoints."""
        return {**self.controller.state_dict(), "reward_stats": self.reward_stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict`."""
        self.controller.load_state_dict(state)
        stats = state.get("reward_stats")
        self.reward_stats = tuple(stats) if stats is not None else None


def normalize_reward(rewards_B: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(r - mean) / std`` with the constants of the starting policy's rewards (Ziegler et al., arXiv
    1909.08593 §2.2: the reward model normalised to mean 0 and variance 1 under the initial policy). A
    constant first batch (std 0) is only shifted."""
    return (rewards_B - mean) / (std if std > 1e-8 else 1.0)


def make_objective(config: RLConfig) -> GRPOObjective | PPOObjective:
    """The objective of a stage config."""
    if isinstance(config, PPOConfig):
        return PPOObjective(config)
    if isinstance(config, GRPOConfig):
        return GRPOObjective(config)
    raise TypeError(f"no RL objective for {type(config).__name__}")
