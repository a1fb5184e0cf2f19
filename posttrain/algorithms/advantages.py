"""Advantage estimators and their registry.

Calling convention for registered estimators (always by keyword; there is no fake uniform signature):

- Outcome-reward estimators (``"grpo"``, ``"dr_grpo"``, ``"rloo"``, ``"reinforce_pp"``,
  ``"reinforce_pp_baseline"``) take ``rewards_B`` (one scalar reward per completion) and ``group_size``, and
  return ``advantages_B``. Completions of one prompt are contiguous: rows ``[g * group_size, (g + 1) *
  group_size)`` form group ``g``. The policy loss broadcasts ``advantages_B`` over tokens. Two keywords are
  optional, passed only to an estimator whose signature takes them: ``valid_B`` (False for a completion the
  reward could not judge: it stays out of every statistic and gets advantage 0) and ``sum_over_processes``
  (the collective that sums a tensor over processes, for statistics of the global batch).
- Token-level estimators (``"gae"``) take ``rewards_BT``, ``values_BT``, ``mask_BT``, ``gamma`` and
  ``lam``, and return ``(advantages_BT, returns_BT)``.

A user-defined estimator registers with ``@register_advantage_estimator("name")`` (or is named in a recipe
as ``path/to/file.py:function``) and follows whichever of the two conventions fits it: GRPO stages call
the outcome one, PPO stages the token-level one.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from posttrain.registry import ADVANTAGE_ESTIMATORS as _ADVANTAGE_ESTIMATORS


def register_advantage_estimator(name: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator that makes an advantage estimator available to recipes under ``name``; its calling
    convention (``token`` if it takes ``rewards_BT``, else ``outcome``) decides which stages may name it.

    Raises:
        ValueError: If ``name`` is already taken.
    """

    def decorate(function: Callable[..., object]) -> Callable[..., object]:
        label = "token" if "rewards_BT" in inspect.signature(function).parameters else "outcome"
        return _ADVANTAGE_ESTIMATORS.register(name, label)(function)

    return decorate


def get_advantage_estimator(name: str) -> Callable[..., object]:
    """Returns the advantage estimator registered under ``name``.

    Raises:
        ValueError: For an unknown name; the message lists the valid ones.
    """
    return _ADVANTAGE_ESTIMATORS.get(name)


def advantage_estimator_names() -> list[str]:
    """Returns the registered advantage estimator names, sorted."""
    return _ADVANTAGE_ESTIMATORS.names()


@register_advantage_estimator("gae")
@torch.no_grad()
def gae_advantages(
    rewards_BT: torch.Tensor,
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al., arXiv 1506.02438 eq. 16).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = sum_l (gamma * lam)^l * delta_{t+l}``, computed
    by the backward recursion ``A_t = delta_t + gamma * lam * A_{t+1}``.

    Masked positions are skipped: the recursion carries ``V`` and ``A`` of the next *valid* token across
    them. With right padding this means the value after the last valid token is 0 (the episode ends
    there) and rewards/values in the padding are ignored, whatever they contain. A gap in the middle of
    a sequence (e.g. tool output in a multi-turn rollout) counts as a single step.

    No gradient flows: advantages and returns are regression/weighting targets.

    Args:
        rewards_BT: Per-token rewards, shape (B, T); typically the task reward on the last valid token
            plus a per-token KL penalty.
        values_BT: Value estimates V(s_t), shape (B, T).
        mask_BT: Valid-token mask, shape (B, T); boolean or 0/1.
        gamma: Discount factor.
        lam: GAE lambda; 0 gives one-step TD, 1 gives Monte-Carlo returns minus V.

    Returns:
        ``(advantages_BT, returns_BT)``, both shape (B, T) and 0 at masked positions;
        ``returns_BT = advantages_BT + values_BT`` are the value-function targets.
    """
    # Padding may hold anything, even NaN: masked steps are only ever read through torch.where, so
    # nothing computed from them reaches a valid position.
    valid_BT = mask_BT.bool()
    next_value_B = torch.zeros_like(values_BT[:, 0])
    next_advantage_B = torch.zeros_like(values_BT[:, 0])
    advantages_reversed: list[torch.Tensor] = []
    # The recursion is sequential in t but independent across the batch, so loop over T only.
    for t in reversed(range(rewards_BT.shape[1])):
        valid_B = valid_BT[:, t]
        delta_B = rewards_BT[:, t] + gamma * next_value_B - values_BT[:, t]
        advantage_B = delta_B + gamma * lam * next_advantage_B
        next_value_B = torch.where(valid_B, values_BT[:, t], next_value_B)
        next_advantage_B = torch.where(valid_B, advantage_B, next_advantage_B)
        advantages_reversed.append(torch.where(valid_B, advantage_B, torch.zeros_like(advantage_B)))
    advantages_BT = torch.stack(advantages_reversed[::-1], dim=1)
    returns_BT = torch.where(valid_BT, advantages_BT + values_BT, torch.zeros_like(values_BT))
    return advantages_BT, returns_BT


SumOverProcesses = Callable[[torch.Tensor], torch.Tensor]


def _grouped(rewards_B: torch.Tensor, group_size: int, minimum: int) -> torch.Tensor:
    """Reshapes ``rewards_B`` to (num_groups, group_size) after checking the layout."""
    if rewards_B.dim() != 1:
        raise ValueError(f"rewards_B must be 1-D, got shape {tuple(rewards_B.shape)}")
    if group_size < minimum:
        raise ValueError(f"group_size must be >= {minimum}, got {group_size}")
    if rewards_B.shape[0] % group_size != 0:
        raise ValueError(f"batch size {rewards_B.shape[0]} is not a multiple of group_size {group_size}")
    return rewards_B.reshape(-1, group_size)


def _valid_grouped(rewards_B: torch.Tensor, valid_B: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """``valid_B`` as (num_groups, group_size) booleans; every row valid when it is None."""
    if valid_B is None:
        return torch.ones(rewards_B.shape[0] // group_size, group_size, dtype=torch.bool, device=rewards_B.device)
    if valid_B.shape != rewards_B.shape:
        raise ValueError(f"valid_B has shape {tuple(valid_B.shape)}, rewards_B {tuple(rewards_B.shape)}")
    return valid_B.bool().reshape(-1, group_size)


def _group_mean(rewards_GS: torch.Tensor, valid_GS: torch.Tensor) -> torch.Tensor:
    """Each group's mean over its valid rows, (G, 1); 0 for a group with none."""
    kept_GS = torch.where(valid_GS, rewards_GS, torch.zeros_like(rewards_GS))
    return kept_GS.sum(dim=1, keepdim=True) / valid_GS.sum(dim=1, keepdim=True).clamp(min=1).to(rewards_GS.dtype)


@register_advantage_estimator("grpo")
def group_advantages(
    rewards_B: torch.Tensor, group_size: int, valid_B: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al., arXiv 2402.03300 §4.1.2).

    ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``, with the unbiased (n - 1) standard deviation
    as ``torch.std`` and the reference implementations use. Mean and standard deviation run over the
    group's valid completions only (as TRL's do over the rewards it received): valid (1, 0, 0) and one
    excluded give (1.155, -0.577, -0.577) and 0.

    A group whose rewards are all equal gets advantage 0 (not NaN): it carries no learning signal; so
    does a group with fewer than two valid completions.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.
        valid_B: False for completions left out (reward infrastructure error), shape (B,); None: all valid.
        eps: Added to the standard deviation.

    Returns:
        Advantages, shape (B,); 0 for excluded completions.

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    valid_GS = _valid_grouped(rewards_B, valid_B, group_size)
    centred_GS = torch.where(valid_GS, rewards_GS - _group_mean(rewards_GS, valid_GS), torch.zeros_like(rewards_GS))
    count_G1 = valid_GS.sum(dim=1, keepdim=True).to(rewards_GS.dtype)
    std_G1 = (centred_GS.square().sum(dim=1, keepdim=True) / (count_G1 - 1).clamp(min=1)).sqrt()
    return (centred_GS / (std_G1 + eps)).reshape(-1)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards_B: torch.Tensor, group_size: int, valid_B: torch.Tensor | None = None) -> torch.Tensor:
    """Dr. GRPO's advantages (Liu et al., arXiv 2503.20783 §3.1): ``A_i = r_i - mean(r_group)``.

    GRPO's division by the group's standard deviation is dropped: it up-weights prompts whose rewards
    barely vary (too easy or too hard). Pair it with ``loss_aggregation: seq-mean-token-sum-norm``. The
    mean runs over the group's valid completions.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.
        valid_B: False for completions left out, shape (B,); None: all valid.

    Returns:
        Advantages, shape (B,); 0 for excluded completions.

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    valid_GS = _valid_grouped(rewards_B, valid_B, group_size)
    centred_GS = rewards_GS - _group_mean(rewards_GS, valid_GS)
    return torch.where(valid_GS, centred_GS, torch.zeros_like(centred_GS)).reshape(-1)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards_B: torch.Tensor, group_size: int, valid_B: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
    free!", ICLR 2019 DeepRLStructPred workshop; Ahmadian et al., arXiv 2402.14740, the RLOO estimator).

    Each completion's baseline is the mean reward of the *other* valid completions of the same prompt:
    ``A_i = r_i - (sum_j r_j - r_i) / (n - 1)`` over the n valid ones. Unlike the group mean, this baseline
    does not depend on ``r_i``, so the policy-gradient estimate stays unbiased. With fewer than two valid
    completions there is no baseline and the advantage is 0.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.
        valid_B: False for completions left out, shape (B,); None: all valid.

    Returns:
        Advantages, shape (B,); 0 for excluded completions.

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    valid_GS = _valid_grouped(rewards_B, valid_B, group_size)
    kept_GS = torch.where(valid_GS, rewards_GS, torch.zeros_like(rewards_GS))
    count_G1 = valid_GS.sum(dim=1, keepdim=True)
    baseline_GS = (kept_GS.sum(dim=1, keepdim=True) - kept_GS) / (count_G1 - 1).clamp(min=1).to(rewards_GS.dtype)
    has_baseline_GS = valid_GS & (count_G1 >= 2)
    return torch.where(has_baseline_GS, rewards_GS - baseline_GS, torch.zeros_like(rewards_GS)).reshape(-1)


def _global_normalised(
    values_B: torch.Tensor, valid_B: torch.Tensor, sum_over_processes: SumOverProcesses | None, eps: float
) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` with the mean and unbiased std of the valid entries of the global batch
    (summed over processes in float64); 0 for the invalid entries."""
    kept_B = torch.where(valid_B, values_B, torch.zeros_like(values_B)).double()
    totals = torch.stack([valid_B.sum().double(), kept_B.sum(), kept_B.square().sum()])
    count, total, squares = (sum_over_processes(totals) if sum_over_processes is not None else totals).unbind()
    mean = total / count.clamp(min=1)
    std = ((squares - count * mean**2).clamp(min=0) / (count - 1).clamp(min=1)).sqrt()
    normalised_B = ((values_B.double() - mean) / (std + eps)).to(values_B.dtype)
    return torch.where(valid_B, normalised_B, torch.zeros_like(normalised_B))


@register_advantage_estimator("reinforce_pp")
def reinforce_pp_advantages(
    rewards_B: torch.Tensor,
    group_size: int,
    valid_B: torch.Tensor | None = None,
    sum_over_processes: SumOverProcesses | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++ advantages (Hu et al., arXiv 2501.03262, eqs. 8-10 of v1: global advantage normalisation).

    ``A_i = (r_i - mean_batch(r)) / std_batch(r)``: no critic and no per-prompt statistics; mean and
    (unbiased) standard deviation run over every valid completion of the *global* batch, all processes
    together (``sum_over_processes``), so the scale does not depend on how prompts were split over
    processes. Works with ``group_size`` 1 (one completion per prompt).

    Here the KL to the reference stays a loss term (``kl.coef`` of the GRPO-kind stage, as OpenRLHF's
    ``--use_kl_loss``); the paper's default subtracts ``beta * sum_{i >= t} KL_i`` from the reward of token t
    (eq. 8), which makes the advantage per token: not done here. Statistics count each completion once
    (OpenRLHF weights them by tokens).

    Args:
        rewards_B: One reward per completion, shape (B,).
        group_size: Completions per prompt (unused by the statistics; B must be a multiple of it).
        valid_B: False for completions left out, shape (B,); None: all valid.
        sum_over_processes: sums a tensor over processes; None: this process holds the whole batch.
        eps: Added to the standard deviation.

    Returns:
        Advantages, shape (B,); 0 for excluded completions.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=1)
    valid_GS = _valid_grouped(rewards_B, valid_B, group_size)
    return _global_normalised(rewards_GS.reshape(-1), valid_GS.reshape(-1), sum_over_processes, eps)


@register_advantage_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(
    rewards_B: torch.Tensor,
    group_size: int,
    valid_B: torch.Tensor | None = None,
    sum_over_processes: SumOverProcesses | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++ with baseline (Hu et al., arXiv 2501.03262, "REINFORCE++ w/ Baseline", for k > 1
    completions per prompt): ``A~_i = r_i - mean(r_group)``, then ``A_i = (A~_i - mean_batch(A~)) /
    std_batch(A~)`` over the global batch.

    Unlike GRPO the standard deviation is not the prompt's own (so an almost-solved prompt is not
    up-weighted), and unlike TRL's ``scale_rewards="batch"`` it is that of the centred rewards ``A~``, not
    of the raw rewards. The group mean and the batch statistics run over valid completions only.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.
        valid_B: False for completions left out, shape (B,); None: all valid.
        sum_over_processes: sums a tensor over processes; None: this process holds the whole batch.
        eps: Added to the standard deviation.

    Returns:
        Advantages, shape (B,); 0 for excluded completions.

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    valid_GS = _valid_grouped(rewards_B, valid_B, group_size)
    centred_GS = rewards_GS - _group_mean(rewards_GS, valid_GS)
    return _global_normalised(centred_GS.reshape(-1), valid_GS.reshape(-1), sum_over_processes, eps)
