"""DAPO's batch-shaping pieces (Yu et al., arXiv 2503.14476): the soft overlong penalty (§3.4) and the test
that decides which groups dynamic sampling keeps (§3.2). Clip-higher (§3.1) is ``clip_eps_high`` of the
policy losses and token-level aggregation (§3.3) is ``aggregate_loss(mode="token-mean")``.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths_B: torch.Tensor, max_length: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476 §3.4, eq. 13), added to the task reward.

    With ``L_max = max_length`` and ``L_cache = buffer``::

        R_length(y) = 0                                   if |y| <= L_max - L_cache
                      ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                      -1                                  if |y| > L_max

    times ``penalty`` (1 in the paper): the penalty grows linearly over the last ``buffer`` tokens of the
    budget, so a long answer is discouraged before it is cut off.

    Args:
        lengths_B: Completion lengths in tokens, (B,).
        max_length: L_max, the generation budget.
        buffer: L_cache, the tokens over which the penalty ramps from 0 to -penalty; 0 < buffer <= max_length.
        penalty: Scale of the penalty.

    Returns:
        The length reward, (B,), float32, in ``[-penalty, 0]``.

    Raises:
        ValueError: If ``buffer`` is not in ``(0, max_length]``.

    >>> overlong_penalty(torch.tensor([10, 12, 14, 16, 17]), max_length=16, buffer=4).tolist()
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"the overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    expected = max_length - buffer
    ramp_B = (expected - lengths_B.float()) / buffer
    length_reward_B = torch.where(lengths_B <= expected, torch.zeros_like(ramp_B), ramp_B).clamp(min=-1.0)
    return penalty * length_reward_B


def informative_groups(rewards_B: torch.Tensor, valid_B: torch.Tensor, group_size: int) -> torch.Tensor:
    """The groups dynamic sampling keeps (arXiv 2503.14476 §3.2, eq. 11's constraint ``0 < |{o_i correct}| <
    G``, for any reward: not all equal): (num_groups,) booleans, True where the group's valid rewards differ.

    A group whose rewards are all equal has advantage 0 under every group-relative estimator, so it adds no
    gradient but still counts in token-mean losses, diluting the others. A group with fewer than two valid
    completions is not informative either.

    >>> informative_groups(torch.tensor([1., 0., 1., 1., 0., 5.]), torch.tensor([True] * 4 + [False, True]), 2).tolist()
    [True, False, False]
    """
    rewards_GS = rewards_B.view(-1, group_size)
    valid_GS = valid_B.view(-1, group_size)
    high_G = torch.where(valid_GS, rewards_GS, torch.full_like(rewards_GS, float("-inf"))).max(dim=1).values
    low_G = torch.where(valid_GS, rewards_GS, torch.full_like(rewards_GS, float("inf"))).min(dim=1).values
    return (high_G - low_G > 1e-6) & (valid_GS.sum(dim=1) >= 2)
