import statistics
from typing import Callable

import pytest
import torch

from posttrain.algorithms import (
    advantage_estimator_names,
    dr_grpo_advantages,
    gae_advantages,
    get_advantage_estimator,
    group_advantages,
    register_advantage_estimator,
    rloo_advantages,
)

F64 = torch.float64


def test_gae_by_hand() -> None:
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72.
    # Row 0, three valid steps, rewards (0, 0, 1), values (0.5, 0.4, 0.3), value after the end = 0:
    #   delta_2 = 1 + 0.9 * 0   - 0.3 =  0.7     A_2 = 0.7
    #   delta_1 = 0 + 0.9 * 0.3 - 0.4 = -0.13    A_1 = -0.13 + 0.72 * 0.7   = 0.374
    #   delta_0 = 0 + 0.9 * 0.4 - 0.5 = -0.14    A_0 = -0.14 + 0.72 * 0.374 = 0.12928
    #   returns = A + V = (0.62928, 0.774, 1.0)
    # Row 1, right-padded after two steps; the junk 99s in the padding must be ignored:
    #   delta_1 = 1 + 0.9 * 0   - 0.6 = 0.4      A_1 = 0.4
    #   delta_0 = 0 + 0.9 * 0.6 - 0.2 = 0.34     A_0 = 0.34 + 0.72 * 0.4 = 0.628
    #   returns = (0.828, 1.0, 0)
    # Row 2 has no valid token: all zeros.
    rewards_BT = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 99.0], [5.0, 5.0, 5.0]], dtype=F64)
    values_BT = torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.6, 99.0], [1.0, 1.0, 1.0]], dtype=F64)
    mask_BT = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    advantages_BT, returns_BT = gae_advantages(rewards_BT, values_BT, mask_BT, gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        advantages_BT, torch.tensor([[0.12928, 0.374, 0.7], [0.628, 0.4, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    )
    torch.testing.assert_close(
        returns_BT, torch.tensor([[0.62928, 0.774, 1.0], [0.828, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    )


def _loop_gae(
    rewards: list[float], values: list[float], mask: list[bool], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Reference: drop masked steps, run textbook GAE on what is left, scatter back."""
    steps = [t for t, keep in enumerate(mask) if keep]
    advantages, returns = [0.0] * len(mask), [0.0] * len(mask)
    running = 0.0
    for i in reversed(range(len(steps))):
        t = steps[i]
        next_value = values[steps[i + 1]] if i + 1 < len(steps) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        returns[t] = running + values[t]
    return advantages, returns


@pytest.mark.parametrize("seed", range(6))
def test_gae_matches_loop_with_random_masks(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    batch, length = 5, 11
    rewards_BT = torch.randn(batch, length, generator=generator, dtype=F64)
    values_BT = torch.randn(batch, length, generator=generator, dtype=F64)
    lengths = torch.randint(0, length + 1, (batch,), generator=generator)
    mask_BT = torch.arange(length) < lengths[:, None]
    if seed % 2:  # odd seeds also punch holes inside sequences (e.g. tool-output tokens)
        mask_BT &= torch.rand(batch, length, generator=generator) < 0.7
    gamma, lam = 0.95, 0.9
    advantages_BT, returns_BT = gae_advantages(rewards_BT, values_BT, mask_BT, gamma, lam)
    for row in range(batch):
        expected_advantages, expected_returns = _loop_gae(
            rewards_BT[row].tolist(), values_BT[row].tolist(), mask_BT[row].tolist(), gamma, lam
        )
        torch.testing.assert_close(advantages_BT[row], torch.tensor(expected_advantages, dtype=F64))
        torch.testing.assert_close(returns_BT[row], torch.tensor(expected_returns, dtype=F64))


def test_gae_ignores_nan_in_padding() -> None:
    rewards_BT = torch.tensor([[0.0, 1.0, float("nan")]])
    values_BT = torch.tensor([[0.2, 0.6, float("inf")]])
    advantages_BT, returns_BT = gae_advantages(rewards_BT, values_BT, torch.tensor([[1, 1, 0]]), 0.9, 0.8)
    # Same numbers as row 1 of test_gae_by_hand.
    torch.testing.assert_close(advantages_BT, torch.tensor([[0.628, 0.4, 0.0]]))
    torch.testing.assert_close(returns_BT, torch.tensor([[0.828, 1.0, 0.0]]))


def test_gae_passes_no_gradient() -> None:
    values_BT = torch.ones(1, 3, requires_grad=True)
    advantages_BT, returns_BT = gae_advantages(torch.ones(1, 3), values_BT, torch.ones(1, 3), 1.0, 1.0)
    assert not advantages_BT.requires_grad and not returns_BT.requires_grad


def test_group_advantages_by_hand() -> None:
    # Group 0 rewards (1, 0, 1, 0): mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735,
    # so advantages +-0.5 / 0.57735 = +-0.866025. Group 1 is constant: no signal, advantage 0, no NaN.
    rewards_B = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=F64)
    grpo = group_advantages(rewards_B, group_size=4, eps=0.0 + 1e-12)
    expected = torch.tensor([0.866025, -0.866025, 0.866025, -0.866025, 0, 0, 0, 0], dtype=F64)
    torch.testing.assert_close(grpo, expected, atol=1e-6, rtol=0)
    # Dr. GRPO: no division by the standard deviation.
    dr_grpo = dr_grpo_advantages(rewards_B, group_size=4)
    torch.testing.assert_close(dr_grpo, torch.tensor([0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0], dtype=F64))


def test_group_advantages_zero_variance_float_rewards_are_zero() -> None:
    advantages = group_advantages(torch.full((6,), 0.1), group_size=3)
    assert torch.isfinite(advantages).all()
    torch.testing.assert_close(advantages, torch.zeros(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages_match_loop(seed: int, normalize_std: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    group_size = 2 + seed
    rewards_B = torch.randn(3 * group_size, generator=generator, dtype=F64)
    expected = []
    for start in range(0, len(rewards_B), group_size):
        group = rewards_B[start : start + group_size].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        expected.extend((r - mean) / (std + 1e-6) if normalize_std else r - mean for r in group)
    if normalize_std:
        actual = group_advantages(rewards_B, group_size, eps=1e-6)
    else:
        actual = dr_grpo_advantages(rewards_B, group_size)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64))


def test_rloo_by_hand() -> None:
    # Group (3, 0, 6): leave-one-out baselines (0+6)/2 = 3, (3+6)/2 = 4.5, (3+0)/2 = 1.5.
    advantages = rloo_advantages(torch.tensor([3.0, 0.0, 6.0, 2.0, 2.0, 2.0]), group_size=3)
    torch.testing.assert_close(advantages, torch.tensor([0.0, -4.5, 4.5, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("seed", range(5))
def test_rloo_matches_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    group_size = 2 + seed
    rewards_B = torch.randn(4 * group_size, generator=generator, dtype=F64)
    rewards = rewards_B.tolist()
    expected = []
    for i, reward in enumerate(rewards):
        start = i - i % group_size
        others = [rewards[j] for j in range(start, start + group_size) if j != i]
        expected.append(reward - sum(others) / len(others))
    torch.testing.assert_close(rloo_advantages(rewards_B, group_size), torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize("estimator", [group_advantages, dr_grpo_advantages, rloo_advantages])
def test_group_layout_errors(estimator: Callable[..., torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="multiple of group_size"):
        estimator(torch.zeros(7), group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        estimator(torch.zeros(4), group_size=1)


def test_advantage_registry() -> None:
    assert {"gae", "grpo", "dr_grpo", "rloo"} <= set(advantage_estimator_names())
    assert get_advantage_estimator("grpo") is group_advantages
    assert get_advantage_estimator("dr_grpo") is dr_grpo_advantages
    assert get_advantage_estimator("rloo") is rloo_advantages
    advantages_BT, _ = get_advantage_estimator("gae")(
        rewards_BT=torch.ones(1, 1), values_BT=torch.zeros(1, 1), mask_BT=torch.ones(1, 1), gamma=1.0, lam=1.0
    )
    assert advantages_BT.item() == 1.0
    with pytest.raises(ValueError, match="valid: .*dr_grpo, gae, grpo, .*rloo"):
        get_advantage_estimator("ppo")
    with pytest.raises(ValueError, match="registered twice"):
        register_advantage_estimator("grpo")(rloo_advantages)
