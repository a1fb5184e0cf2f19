"""Advantage estimators and their registry.

Calling convention for registered estimators (always by keyword; there is no fake uniform signature):

- Outcome-reward estimators (``"grpo"``, ``"dr_grpo"``, ``"rloo"``) take ``rewards_B`` (one scalar reward per
  completion) and ``group_size``, and return ``advantages_B``. Completions of one prompt are contiguous:
  rows ``[g * group_size, (g + 1) * group_size)`` form group ``g``. The policy loss broadcasts
  ``advantages_B`` over tokens.
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


def _grouped(rewards_B: torch.Tensor, group_size: int, minimum: int) -> torch.Tensor:
    """Reshapes ``rewards_B`` to (num_groups, group_size) after checking the layout."""
    if rewards_B.dim() != 1:
        raise ValueError(f"rewards_B must be 1-D, got shape {tuple(rewards_B.shape)}")
    if group_size < minimum:
        raise ValueError(f"group_size must be >= {minimum}, got {group_size}")
    if rewards_B.shape[0] % group_size != 0:
        raise ValueError(f"batch size {rewards_B.shape[0]} is not a multiple of group_size {group_size}")
    return rewards_B.reshape(-1, group_size)


@register_advantage_estimator("grpo")
def group_advantages(rewards_B: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al., arXiv 2402.03300 §4.1.2).

    ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``, with the unbiased (n - 1) standard deviation
    as ``torch.std`` and the reference implementations use.

    A group whose rewards are all equal gets advantage 0 (not NaN): it carries no learning signal.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.
        eps: Added to the standard deviation.

    Returns:
        Advantages, shape (B,).

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    centred_GS = rewards_GS - rewards_GS.mean(dim=1, keepdim=True)
    return (centred_GS / (rewards_GS.std(dim=1, keepdim=True) + eps)).reshape(-1)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO's advantages (Liu et al., arXiv 2503.20783 §3.1): ``A_i = r_i - mean(r_group)``.

    GRPO's division by the group's standard deviation is dropped: it up-weights prompts whose rewards
    barely vary (too easy or too hard). Pair it with ``loss_aggregation: seq-mean-token-sum-norm``.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.

    Returns:
        Advantages, shape (B,).

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    return (rewards_GS - rewards_GS.mean(dim=1, keepdim=True)).reshape(-1)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
    free!", ICLR 2019 DeepRLStructPred workshop; Ahmadian et al., arXiv 2402.14740, the RLOO estimator).

    Each completion's baseline is the mean reward of the *other* completions of the same prompt:
    ``A_i = r_i - (sum_j r_j - r_i) / (G - 1)``. Unlike the group mean, this baseline does not depend on
    ``r_i``, so the policy-gradient estimate stays unbiased.

    Args:
        rewards_B: One reward per completion, shape (B,), groups contiguous.
        group_size: Completions per prompt, G >= 2; B must be a multiple of it.

    Returns:
        Advantages, shape (B,).

    Raises:
        ValueError: If ``rewards_B`` is not 1-D, ``group_size < 2`` or B is not a multiple of it.
    """
    rewards_GS = _grouped(rewards_B, group_size, minimum=2)
    baseline_GS = (rewards_GS.sum(dim=1, keepdim=True) - rewards_GS) / (group_size - 1)
    return (rewards_GS - baseline_GS).reshape(-1)
