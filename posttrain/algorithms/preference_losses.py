"""Pairwise preference losses: reward-model training and DPO."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards_B: torch.Tensor,
    rejected_rewards_B: torch.Tensor,
    margin_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry pairwise reward-model loss (Ouyang et al., arXiv 2203.02155 eq. 1).

    ``loss = -mean(log sigmoid(r_chosen - r_rejected - margin))``. The optional margin (Llama 2, arXiv
    2307.09288 eq. 2) asks for a larger reward gap on pairs that annotators rated as clearly different.

    Args:
        chosen_rewards_B: Scalar reward of each preferred completion, (B,).
        rejected_rewards_B: Scalar reward of each dispreferred completion, (B,).
        margin_B: Required reward gap per pair, (B,), or None for 0.

    Returns:
        ``(loss, metrics)``: a 0-dim loss and detached 0-dim tensors ``accuracy`` (fraction of pairs
        with r_chosen > r_rejected; ties count as wrong), ``margin`` (mean r_chosen - r_rejected),
        ``chosen_reward`` and ``rejected_reward`` (means).
    """
    reward_gap_B = chosen_rewards_B - rejected_rewards_B
    logits_B = reward_gap_B if margin_B is None else reward_gap_B - margin_B
    loss = -F.logsigmoid(logits_B).mean()
    metrics = {
        "accuracy": (reward_gap_B > 0).to(loss.dtype).mean(),
        "margin": reward_gap_B.mean(),
        "chosen_reward": chosen_rewards_B.mean(),
        "rejected_reward": rejected_rewards_B.mean(),
    }
    return loss, {name: value.detach() for name, value in metrics.items()}


def dpo_loss(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    ref_chosen_logps_B: torch.Tensor,
    ref_rejected_logps_B: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sigmoid DPO loss (Rafailov et al., arXiv 2305.18290 eq. 7).

    With implicit rewards ``r = beta * (log pi(y|x) - log pi_ref(y|x))`` and ``z = r_chosen - r_rejected``::

        loss = -(1 - label_smoothing) * log sigmoid(z) - label_smoothing * log sigmoid(-z)

    ``label_smoothing = eps > 0`` is conservative DPO (cDPO; E. Mitchell, "A note on DPO with noisy
    preferences & relationship to IPO", 2023), which assumes each label is flipped with probability eps.
    When the policy equals the reference, z = 0 and the loss is log 2.

    Args:
        policy_chosen_logps_B: Summed log-probability of each chosen completion under the policy, (B,).
        policy_rejected_logps_B: Same for the rejected completion, (B,).
        ref_chosen_logps_B: Chosen completion under the frozen reference, (B,); treated as constant.
        ref_rejected_logps_B: Rejected completion under the reference, (B,); treated as constant.
        beta: Inverse temperature of the implicit reward; larger keeps the policy closer to the reference.
        label_smoothing: cDPO label-noise rate in [0, 0.5).

    Returns:
        ``(loss, metrics)``: a 0-dim loss and detached 0-dim means ``rewards/chosen``,
        ``rewards/rejected``, ``rewards/margins`` and ``rewards/accuracy`` (fraction with
        r_chosen > r_rejected), named as TRL names them so dashboards compare.

    Raises:
        ValueError: If ``label_smoothing`` is outside [0, 0.5).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_rewards_B = beta * (policy_chosen_logps_B - ref_chosen_logps_B.detach())
    rejected_rewards_B = beta * (policy_rejected_logps_B - ref_rejected_logps_B.detach())
    logits_B = chosen_rewards_B - rejected_rewards_B
    losses_B = -(1.0 - label_smoothing) * F.logsigmoid(logits_B) - label_smoothing * F.logsigmoid(-logits_B)
    metrics = {
        "rewards/chosen": chosen_rewards_B.mean(),
        "rewards/rejected": rejected_rewards_B.mean(),
        "rewards/margins": logits_B.mean(),
        "rewards/accuracy": (logits_B > 0).to(logits_B.dtype).mean(),
    }
    return losses_B.mean(), {name: value.detach() for name, value in metrics.items()}


def chosen_nll_loss(policy_chosen_logps_B: torch.Tensor, chosen_lengths_B: torch.Tensor) -> torch.Tensor:
    """Length-normalised negative log-likelihood of the chosen responses: the NLL term of DPO+NLL.

    Pang et al., "Iterative Reasoning Preference Optimization" (arXiv 2404.19733, §2, eq. 1) add
    ``-log pi(y_w|x) / |y_w|`` to the DPO loss so that training on correct-vs-wrong answers raises the
    correct answers' likelihood instead of only the gap (plain DPO lowers both). The paper weights the DPO
    term; here, as in TRL's ``rpo_alpha``, the weight is on this term (`DPOObjective`'s ``nll_weight``)::

        loss = mean_b( -logp_chosen[b] / length[b] )

    Args:
        policy_chosen_logps_B: Summed log-probability of each chosen response under the policy, (B,).
        chosen_lengths_B: Number of tokens summed in each, (B,); must be positive.

    Returns:
        A 0-dim loss.
    """
    return (-policy_chosen_logps_B / chosen_lengths_B.to(policy_chosen_logps_B.dtype)).mean()
