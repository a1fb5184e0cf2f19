"""Policy-gradient losses and their registry.

Calling convention for registered policy losses (always by keyword): every loss takes
``logprobs_BT``, ``old_logprobs_BT``, ``advantages_BT`` and ``mask_BT``, plus its own documented
keywords, and returns ``(loss, metrics)`` where ``loss`` is a 0-dim tensor to minimise and ``metrics``
maps names to detached 0-dim tensors (no ``.item()``, so logging them forces no device sync). A recipe
chooses one by name (`policy_loss:`) or names its own as ``path/to/file.py:function``.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.algorithms.aggregation import aggregate_loss
from posttrain.algorithms.kl import MAX_LOG_RATIO, kl_estimate
from posttrain.algorithms.masked import masked_mean
from posttrain.registry import POLICY_LOSSES as _POLICY_LOSSES

PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator that makes a policy loss available to recipes under ``name``.

    Raises:
        ValueError: If ``name`` is already taken.
    """
    return _POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLoss:
    """Returns the policy loss registered under ``name``.

    Raises:
        ValueError: For an unknown name; the message lists the valid ones.
    """
    return _POLICY_LOSSES.get(name)


def policy_loss_names() -> list[str]:
    """Returns the registered policy loss names, sorted."""
    return _POLICY_LOSSES.names()


def _ppo_clip_token_losses(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None,
    dual_clip: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss, shape (B, T), and its token-mean diagnostics."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    # Gradients must flow through the current policy only; the rest are fixed by the rollout.
    old_logprobs_BT = old_logprobs_BT.detach()
    advantages_BT = advantages_BT.detach()
    if advantages_BT.dim() == 1:
        advantages_BT = advantages_BT.unsqueeze(-1)
    upper = 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high)
    log_ratio_BT = (logprobs_BT - old_logprobs_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio_BT = torch.exp(log_ratio_BT)

    unclipped_BT = -advantages_BT * ratio_BT
    clipped_BT = -advantages_BT * ratio_BT.clamp(1.0 - clip_eps, upper)
    # Loss is the negated objective, so the pessimistic min of eq. 7 becomes a max.
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    metrics = {
        "clip_fraction": masked_mean((clipped_BT > unclipped_BT).to(loss_BT.dtype), mask_BT),
    }
    if dual_clip is not None:
        # For A < 0 a huge ratio makes -A * ratio unbounded; cap it at -A * c (Ye et al.).
        dual_bound_BT = -advantages_BT * dual_clip
        dual_active_BT = (advantages_BT < 0) & (loss_BT > dual_bound_BT)
        loss_BT = torch.where(dual_active_BT, dual_bound_BT, loss_BT)
        metrics["dual_clip_fraction"] = masked_mean(dual_active_BT.to(loss_BT.dtype), mask_BT)

    valid_BT = mask_BT.bool()
    # KL(old || new) by k3 on the tokens sampled from the old policy: (ratio - 1) - log(ratio) >= 0.
    metrics["approx_kl"] = masked_mean(kl_estimate(old_logprobs_BT, logprobs_BT, "k3"), mask_BT)
    metrics["ratio_mean"] = masked_mean(ratio_BT, mask_BT)
    # ratio > 0, so 0 marks padding without winning the max; an all-padding batch reports 0.
    metrics["ratio_max"] = torch.where(valid_BT, ratio_BT, torch.zeros_like(ratio_BT)).max()
    return loss_BT, {name: value.detach() for name, value in metrics.items()}


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss (Schulman et al., arXiv 1707.06347 eq. 7).

    Per token, with ``ratio = exp(logprobs - old_logprobs)``::

        loss = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A)

    Options:
        - ``clip_eps_high``: a separate, larger upper bound ("clip-higher", DAPO, arXiv 2503.14476
          §3.1), which leaves room to raise the probability of unlikely tokens; defaults to ``clip_eps``.
        - ``dual_clip = c > 1``: for A < 0 the loss is additionally capped at ``-c * A`` (dual-clip PPO,
          Ye et al., arXiv 1912.09729), so one token with a huge ratio cannot dominate the update.
          Tokens with A >= 0 are unaffected.

    The log-ratio is clamped to ``[-MAX_LOG_RATIO, MAX_LOG_RATIO]`` before ``exp`` so a stale or
    numerically broken token cannot produce inf.

    Args:
        logprobs_BT: Log-probabilities of the sampled tokens under the policy being trained, (B, T).
        old_logprobs_BT: Same tokens under the policy that sampled them, (B, T); treated as constants.
        advantages_BT: Advantages, (B, T), or (B,) for one advantage per sequence (GRPO, RLOO), which is
            broadcast over tokens.
        mask_BT: Valid-token mask, (B, T); boolean or 0/1.
        clip_eps: Lower (and, by default, upper) clip range.
        clip_eps_high: Upper clip range, if different.
        dual_clip: The dual-clip constant c (> 1), or None to disable.
        aggregation: Token aggregation mode, see ``aggregate_loss``.
        max_length: Constant divisor for ``aggregation="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``: a 0-dim loss and detached 0-dim tensors, all token-means over valid tokens
        except ``ratio_max``: ``clip_fraction`` (tokens whose clipped term was chosen, i.e. with no
        gradient), ``dual_clip_fraction`` (only when ``dual_clip`` is set), ``approx_kl`` (k3 estimate of
        KL(old || new) on the sampled tokens: ``(ratio - 1) - log ratio``), ``ratio_mean``, ``ratio_max``.

    Raises:
        ValueError: If ``dual_clip <= 1`` or ``aggregation`` is unknown.
    """
    loss_BT, metrics = _ppo_clip_token_losses(
        logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT, clip_eps, clip_eps_high, dual_clip
    )
    return aggregate_loss(loss_BT, mask_BT, aggregation, max_length), metrics


@register_policy_loss("grpo")
def grpo_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_kind: str = "k3",
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss: PPO clip plus a per-token KL penalty to a reference (Shao et al., arXiv 2402.03300
    eq. 3, KL estimator eq. 4).

    Per token: ``ppo_clip_token_loss + beta * KL_kind(policy || reference)``, then aggregated with
    ``aggregation`` (the paper's own choice is ``"seq-mean-token-mean"``; Dr. GRPO uses
    ``"seq-mean-token-sum-norm"``, DAPO ``"token-mean"``). The KL term is inside the aggregation so
    both terms weight tokens the same way, as in eq. 3.

    Args:
        logprobs_BT: Log-probabilities of the sampled tokens under the policy being trained, (B, T).
        old_logprobs_BT: Same tokens under the sampling policy, (B, T).
        advantages_BT: Advantages, (B, T), or (B,) broadcast over tokens.
        mask_BT: Valid-token mask, (B, T); boolean or 0/1.
        ref_logprobs_BT: Same tokens under the frozen reference policy, (B, T). Required if ``beta > 0``;
            if given with ``beta == 0`` the KL is still reported.
        beta: KL coefficient.
        kl_kind: KL estimator, see ``kl_estimate``; ``"k3"`` as in the paper.
        clip_eps: See ``ppo_clip_loss``.
        clip_eps_high: See ``ppo_clip_loss``.
        dual_clip: See ``ppo_clip_loss``.
        aggregation: Token aggregation mode, see ``aggregate_loss``.
        max_length: Constant divisor for ``aggregation="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``: the metrics of ``ppo_clip_loss`` plus ``kl`` (token-mean KL to the
        reference) when ``ref_logprobs_BT`` is given.

    Raises:
        ValueError: If ``beta > 0`` without ``ref_logprobs_BT``, or as ``ppo_clip_loss`` and
            ``kl_estimate`` do.
    """
    if beta > 0 and ref_logprobs_BT is None:
        raise ValueError("grpo_loss with beta > 0 needs ref_logprobs_BT")
    loss_BT, metrics = _ppo_clip_token_losses(
        logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT, clip_eps, clip_eps_high, dual_clip
    )
    if ref_logprobs_BT is not None:
        kl_BT = kl_estimate(logprobs_BT, ref_logprobs_BT, kl_kind)
        if beta > 0:
            loss_BT = loss_BT + beta * kl_BT
        metrics["kl"] = masked_mean(kl_BT, mask_BT).detach()
    return aggregate_loss(loss_BT, mask_BT, aggregation, max_length), metrics
