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


def _clipped_surrogate(
    log_ratio_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None,
    dual_clip: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss of a log importance ratio (per token, or per sequence broadcast over
    its tokens), shape (B, T), and its token-mean diagnostics."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    advantages_BT = _per_token(advantages_BT)
    upper = 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high)
    ratio_BT = torch.exp(log_ratio_BT.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))

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
    return loss_BT, {**metrics, **_ratio_metrics(ratio_BT, mask_BT)}


def _per_token(advantages_BT: torch.Tensor) -> torch.Tensor:
    """Advantages as constants, (B, T) or (B, 1) for one per sequence (broadcast over tokens)."""
    advantages_BT = advantages_BT.detach()
    return advantages_BT.unsqueeze(-1) if advantages_BT.dim() == 1 else advantages_BT


def _ratio_metrics(ratio_BT: torch.Tensor, mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    valid_BT = mask_BT.bool()
    # ratio > 0, so 0 marks padding without winning the max; an all-padding batch reports 0.
    return {
        "ratio_mean": masked_mean(ratio_BT, mask_BT),
        "ratio_max": torch.where(valid_BT, ratio_BT, torch.zeros_like(ratio_BT)).max(),
    }


def _detached(metrics: dict[str, torch.Tensor], logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor,
              mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """``metrics`` detached, with ``approx_kl``: KL(old || new) by k3 on the tokens sampled from the old policy,
    (ratio - 1) - log(ratio) >= 0."""
    metrics = {**metrics, "approx_kl": masked_mean(kl_estimate(old_logprobs_BT, logprobs_BT, "k3"), mask_BT)}
    return {name: value.detach() for name, value in metrics.items()}


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
    # Gradients must flow through the current policy only; the rest are fixed by the rollout.
    old_logprobs_BT = old_logprobs_BT.detach()
    loss_BT, metrics = _clipped_surrogate(
        logprobs_BT - old_logprobs_BT, advantages_BT, mask_BT, clip_eps, clip_eps_high, dual_clip
    )
    return loss_BT, _detached(metrics, logprobs_BT, old_logprobs_BT, mask_BT)


def _with_kl_penalty(
    loss_BT: torch.Tensor, metrics: dict[str, torch.Tensor], logprobs_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor | None, beta: float, kl_kind: str, mask_BT: torch.Tensor,
) -> torch.Tensor:
    """``loss_BT + beta * KL_kind(policy || reference)`` per token (GRPO, arXiv 2402.03300 eq. 3); the KL's
    token mean goes into ``metrics`` whenever the reference is given."""
    if beta > 0 and ref_logprobs_BT is None:
        raise ValueError("a policy loss with beta > 0 needs ref_logprobs_BT")
    if ref_logprobs_BT is not None:
        kl_BT = kl_estimate(logprobs_BT, ref_logprobs_BT, kl_kind)
        if beta > 0:
            loss_BT = loss_BT + beta * kl_BT
        metrics["kl"] = masked_mean(kl_BT, mask_BT).detach()
    return loss_BT


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
    loss_BT = _with_kl_penalty(loss_BT, metrics, logprobs_BT, ref_logprobs_BT, beta, kl_kind, mask_BT)
    return aggregate_loss(loss_BT, mask_BT, aggregation, max_length), metrics


@register_policy_loss("gspo")
def gspo_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_kind: str = "k3",
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    dual_clip: float | None = None,
    aggregation: str = "seq-mean-token-mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO loss: the clipped surrogate on a sequence-level, length-normalised importance ratio (Zheng et al.,
    arXiv 2507.18071 §4.1, the objective J_GSPO and its ratio s_i).

    Per completion i, ``s_i = exp(mean_t log(pi(y_t) / pi_old(y_t)))`` over its valid tokens (the geometric
    mean of the token ratios), and ``loss_i = -min(s_i * A_i, clip(s_i, 1 - clip_eps, 1 + clip_eps_high) * A_i)``:
    the whole completion is clipped or not. The per-completion value is written to each of its tokens, so
    ``aggregation="seq-mean-token-mean"`` (the default, the paper's ``1/G sum_i``) gives exactly J_GSPO;
    ``token-mean`` would weight completions by length. The ratio stays near 1 by construction, hence the
    paper's tiny clip ranges (3e-4, 4e-4), the defaults here. ``beta > 0`` adds a per-token KL term as
    `grpo_loss` does (the paper uses none).

    Args:
        logprobs_BT: Log-probabilities of the sampled tokens under the policy being trained, (B, T).
        old_logprobs_BT: Same tokens under the sampling policy, (B, T); constants.
        advantages_BT: One advantage per completion, (B,), or (B, T) (then token t's own advantage multiplies
            the sequence ratio).
        mask_BT: Valid-token mask, (B, T); boolean or 0/1.
        ref_logprobs_BT, beta, kl_kind: the optional KL term, see `grpo_loss`.
        clip_eps, clip_eps_high, dual_clip: clip ranges of ``s_i``, see `ppo_clip_loss`.
        aggregation: Token aggregation mode, see ``aggregate_loss``.
        max_length: Constant divisor for ``aggregation="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)`` as `grpo_loss`; ``clip_fraction``, ``ratio_mean`` and ``ratio_max`` are those of
        the sequence ratios (token-weighted).
    """
    old_logprobs_BT = old_logprobs_BT.detach()
    log_ratio_B1 = masked_mean(logprobs_BT - old_logprobs_BT, mask_BT, dim=-1).unsqueeze(-1)
    log_ratio_BT = log_ratio_B1.expand_as(logprobs_BT)
    loss_BT, metrics = _clipped_surrogate(log_ratio_BT, advantages_BT, mask_BT, clip_eps, clip_eps_high, dual_clip)
    metrics = _detached(metrics, logprobs_BT, old_logprobs_BT, mask_BT)
    loss_BT = _with_kl_penalty(loss_BT, metrics, logprobs_BT, ref_logprobs_BT, beta, kl_kind, mask_BT)
    return aggregate_loss(loss_BT, mask_BT, aggregation, max_length), metrics


@register_policy_loss("cispo")
def cispo_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_kind: str = "k3",
    clip_eps: float = 1.0,
    clip_eps_high: float | None = 4.0,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO loss: REINFORCE with a clipped, stop-gradient importance weight (MiniMax-M1, arXiv 2506.13585
    §3.1, the objective J_CISPO with the clipped weight r^_{i,t}).

    Per token, ``w = sg(clip(ratio, 1 - clip_eps, 1 + clip_eps_high))`` and ``loss = -w * A * log pi(y_t)``.
    PPO's clip zeroes the gradient of a token whose ratio left the range (often the rare "reflective" tokens
    the paper cares about); here only the weight is bounded and every token keeps its gradient
    ``-w * A * grad log pi``. The paper leaves the lower bound off (a large eps_low): ``clip_eps`` >= 1, the
    default, does that since ratios are positive. TRL's ``loss_type="cispo"`` caps the ratio at its
    ``epsilon_high`` itself: TRL's 5.0 is ``clip_eps_high: 4.0`` here (the default). Token-level
    aggregation (``token-mean``, the paper's ``1 / sum_i |o_i|``) is the default.

    Args:
        logprobs_BT: Log-probabilities of the sampled tokens under the policy being trained, (B, T).
        old_logprobs_BT: Same tokens under the sampling policy, (B, T); constants.
        advantages_BT: Advantages, (B, T), or (B,) broadcast over tokens.
        mask_BT: Valid-token mask, (B, T); boolean or 0/1.
        ref_logprobs_BT, beta, kl_kind: the optional KL term, see `grpo_loss`.
        clip_eps: Lower clip range of the weight (``1 - clip_eps``); >= 1 means none.
        clip_eps_high: Upper clip range of the weight (``1 + clip_eps_high``); None: ``clip_eps``.
        dual_clip: Must be None: the weight is bounded already.
        aggregation: Token aggregation mode, see ``aggregate_loss``.
        max_length: Constant divisor for ``aggregation="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, metrics)``: ``clip_fraction`` (tokens whose weight was clipped; they keep their gradient),
        ``approx_kl``, ``ratio_mean``, ``ratio_max``, and ``kl`` when ``ref_logprobs_BT`` is given.

    Raises:
        ValueError: If ``dual_clip`` is set, or as `grpo_loss` does.
    """
    if dual_clip is not None:
        raise ValueError("cispo_loss takes no dual_clip: its importance weight is clipped already (clip_eps_high)")
    old_logprobs_BT = old_logprobs_BT.detach()
    upper = 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high)
    ratio_BT = torch.exp((logprobs_BT - old_logprobs_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)).detach()
    weight_BT = ratio_BT.clamp(1.0 - clip_eps, upper)
    loss_BT = -weight_BT * _per_token(advantages_BT) * logprobs_BT
    metrics = {"clip_fraction": masked_mean((weight_BT != ratio_BT).to(loss_BT.dtype), mask_BT)}
    metrics = _detached({**metrics, **_ratio_metrics(ratio_BT, mask_BT)}, logprobs_BT, old_logprobs_BT, mask_BT)
    loss_BT = _with_kl_penalty(loss_BT, metrics, logprobs_BT, ref_logprobs_BT, beta, kl_kind, mask_BT)
    return aggregate_loss(loss_BT, mask_BT, aggregation, max_length), metrics
