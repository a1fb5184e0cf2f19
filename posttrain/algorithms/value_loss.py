"""Value-function loss for PPO."""

from __future__ import annotations

import torch

from posttrain.algorithms.aggregation import aggregate_loss
from posttrain.algorithms.masked import masked_mean


def clipped_value_loss(
    values_BT: torch.Tensor,
    old_values_BT: torch.Tensor,
    returns_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float,
    aggregation: str = "token-mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, as in OpenAI baselines' PPO2 (studied in Engstrom et al., "Implementation
    Matters in Deep Policy Gradients", arXiv 2005.12729 §3, "value function clipping").

    Per token::

        v_clipped = old_v + clip(v - old_v, -clip_eps, clip_eps)
        loss = 0.5 * max((v - R)^2, (v_clipped - R)^2)

    so the value head gains nothing from moving further than ``clip_eps`` from its rollout-time estimate.

    Args:
        values_BT: Current value predictions, (B, T).
        old_values_BT: Value predictions at rollout time, (B, T); treated as constants.
        returns_BT: Value targets (e.g. from ``gae_advantages``), (B, T); treated as constants.
        mask_BT: Valid-token mask, (B, T); boolean or 0/1.
        clip_eps: Maximum change of the value prediction that is rewarded.
        aggregation: Token aggregation mode, see ``aggregate_loss``. PPO passes its policy loss's mode, so
            both terms weight tokens alike and micro-batch accumulation (which weights each micro-batch by
            its share of that mode's count) gives the whole batch's value loss.
        max_length: Constant divisor for ``aggregation="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``: a 0-dim loss and detached 0-dim tensors ``value_clip_fraction`` (valid
        tokens where the clipped term was the larger one) and ``value_mean``.
    """
    old_values_BT = old_values_BT.detach()
    returns_BT = returns_BT.detach()
    clipped_values_BT = old_values_BT + (values_BT - old_values_BT).clamp(-clip_eps, clip_eps)
    unclipped_error_BT = (values_BT - returns_BT).square()
    clipped_error_BT = (clipped_values_BT - returns_BT).square()
    loss_BT = 0.5 * torch.maximum(unclipped_error_BT, clipped_error_BT)
    metrics = {
        "value_clip_fraction": masked_mean(
            (clipped_error_BT > unclipped_error_BT).to(loss_BT.dtype), mask_BT
        ).detach(),
        "value_mean": masked_mean(values_BT, mask_BT).detach(),
    }
    return aggregate_loss(loss_BT, mask_BT, aggregation, max_length), metrics
