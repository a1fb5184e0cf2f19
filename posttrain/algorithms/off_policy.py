"""Off-policy correction for rollouts sampled by another engine than the trainer (vLLM, SGLang).

The inference engine and the trainer compute the same policy with different kernels, so the sampler's
probability of a token, pi_sampler(y_t), differs from the trainer's, pi_trainer(y_t), even with identical
weights (bf16 on GPUs: often by much more than rounding). The policy gradient then uses samples from a
policy it does not evaluate, which biases it. Truncated importance sampling (Yao, Liu, Zhang, Bai, Zhou,
Gao, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", 2025,
https://fengyao.notion.site/off-policy-rl — the "TIS" objective, building on Ionides 2008) weights each
token's policy-gradient term by the capped ratio of the two:

    w_t = min(pi_trainer(y_t) / pi_sampler(y_t), C)

    J_TIS(theta) = E_{y ~ pi_sampler}[ sum_t w_t * min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ]

with ``r_t = pi_theta(y_t) / pi_trainer(y_t)`` the usual PPO ratio against the trainer's own log-probs of
the rollout-time weights. The weight is a constant (no gradient); the cap C bounds the variance.

Because ``w_t >= 0``, ``w_t * max(-A r, -A clip(r)) == max(-(w_t A) r, -(w_t A) clip(r))`` (and the
dual-clip bound scales the same way), so the correction is applied by multiplying the advantages per
token (`weight_advantages`) and every registered policy loss gets it unchanged; a KL-to-reference term in
the loss is not weighted, as in the paper.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.kl import MAX_LOG_RATIO, kl_estimate
from posttrain.algorithms.masked import masked_mean


def truncated_importance_weights(
    trainer_logprobs_BT: torch.Tensor, sampler_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TIS weight of each token, ``min(exp(trainer - sampler), cap)`` (Yao et al. 2025, the TIS
    objective above), detached, 0 at padding.

    Args:
        trainer_logprobs_BT: Log-probs of the sampled tokens under the trainer at the rollout-time weights, (B, T).
        sampler_logprobs_BT: The same tokens' log-probs reported by the inference engine that sampled them, (B, T).
        mask_BT: Valid-token mask, (B, T).
        cap: C > 0; weights above it are cut to it.

    Returns:
        ``(weights_BT, metrics)`` with the token means ``tis/weight_mean`` and ``tis/capped_fraction`` (tokens
        whose weight was cut to ``cap``).

    Raises:
        ValueError: If ``cap <= 0``.
    """
    if cap <= 0:
        raise ValueError(f"the truncated-importance-sampling cap must be > 0, got {cap}")
    log_ratio_BT = (trainer_logprobs_BT.detach() - sampler_logprobs_BT.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio_BT = log_ratio_BT.exp()
    weights_BT = ratio_BT.clamp(max=cap) * mask_BT.to(ratio_BT.dtype)
    metrics = {
        "tis/weight_mean": masked_mean(weights_BT, mask_BT),
        "tis/capped_fraction": masked_mean((ratio_BT > cap).to(ratio_BT.dtype), mask_BT),
    }
    return weights_BT, metrics


def weight_advantages(advantages: torch.Tensor, weights_BT: torch.Tensor) -> torch.Tensor:
    """Per-token advantages ``w_t * A_t``, (B, T): ``advantages`` is (B,) (one per completion, broadcast
    over tokens) or (B, T). See the module docstring for why this equals weighting the policy loss."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    return advantages * weights_BT


def sampler_trainer_mismatch(
    trainer_logprobs_BT: torch.Tensor, sampler_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> dict[str, torch.Tensor]:
    """How far the sampler's log-probs are from the trainer's on the same tokens and weights.

    Returns:
        ``rollout/logprob_diff_max``: the largest ``|log pi_trainer - log pi_sampler|`` over valid tokens
        (0 if none), and ``rollout/sampler_kl``: the token mean of the k3 estimate of
        KL(pi_sampler || pi_trainer) (Schulman 2020; unbiased because the tokens were drawn from the sampler).
    """
    mask = mask_BT.bool()
    gap_BT = (trainer_logprobs_BT - sampler_logprobs_BT).abs()
    diff_max = torch.where(mask, gap_BT, torch.zeros_like(gap_BT)).max() if gap_BT.numel() else gap_BT.new_zeros(())
    kl_BT = kl_estimate(sampler_logprobs_BT, trainer_logprobs_BT, "k3")
    return {"rollout/logprob_diff_max": diff_max.detach(), "rollout/sampler_kl": masked_mean(kl_BT, mask).detach()}
