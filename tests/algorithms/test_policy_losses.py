import math

import pytest
import torch

from posttrain.algorithms import (
    get_policy_loss,
    grpo_loss,
    policy_loss_names,
    ppo_clip_loss,
    register_policy_loss,
)

F64 = torch.float64


def _tokens(
    ratios: list[float], advantages: list[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sequence whose valid tokens have the given ratios, plus one junk padding token."""
    logprobs_BT = torch.tensor([[math.log(r) for r in ratios] + [50.0]], dtype=F64, requires_grad=True)
    old_logprobs_BT = torch.zeros(1, len(ratios) + 1, dtype=F64)
    advantages_BT = torch.tensor([advantages + [1e6]], dtype=F64)
    mask_BT = torch.tensor([[1] * len(ratios) + [0]])
    return logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT


def test_ppo_clip_by_hand() -> None:
    # clip_eps = 0.2, per-token loss = max(-A * r, -A * clip(r, 0.8, 1.2)):
    #   A = +1, r = 1.5: max(-1.5, -1.2) = -1.2   clipped (no gradient)
    #   A = +1, r = 0.9: max(-0.9, -0.9) = -0.9   inside the range
    #   A = -1, r = 0.5: max( 0.5,  0.8) =  0.8   clipped (no gradient)
    #   A = -1, r = 1.1: max( 1.1,  1.1) =  1.1   inside the range
    # token-mean = (-1.2 - 0.9 + 0.8 + 1.1) / 4 = -0.05; clip_fraction = 2 / 4.
    # approx_kl (k3 of old vs new) = mean((r - 1) - log r)
    #   = (0.094535 + 0.005361 + 0.193147 + 0.004690) / 4 = 0.074433
    inputs = _tokens([1.5, 0.9, 0.5, 1.1], [1.0, 1.0, -1.0, -1.0])
    logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT = inputs
    loss, metrics = ppo_clip_loss(logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.05)
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert metrics["approx_kl"].item() == pytest.approx(0.074433, abs=1e-6)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    assert metrics["ratio_max"].item() == pytest.approx(1.5)
    assert all(not value.requires_grad and value.dim() == 0 for value in metrics.values())
    # d loss / d logprob = -A * r / 4 on unclipped tokens, 0 on clipped ones and padding.
    loss.backward()
    expected_grad = torch.tensor([[0.0, -0.9 / 4, 0.0, 1.1 / 4, 0.0]], dtype=F64)
    torch.testing.assert_close(logprobs_BT.grad, expected_grad)


def test_clip_higher_widens_only_the_upper_bound() -> None:
    # clip_eps_high = 0.6: r = 1.5 is now inside [0.8, 1.6], so its loss becomes -1.5; r = 0.5 stays clipped.
    # (-1.5 - 0.9 + 0.8 + 1.1) / 4 = -0.125, clip_fraction 1 / 4.
    inputs = _tokens([1.5, 0.9, 0.5, 1.1], [1.0, 1.0, -1.0, -1.0])
    loss, metrics = ppo_clip_loss(*inputs, clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx(-0.125)
    assert metrics["clip_fraction"].item() == pytest.approx(0.25)


def test_dual_clip_only_caps_negative_advantages() -> None:
    # c = 3. Standard PPO losses:
    #   A = -1, r = 5:   max(5, 1.2) = 5      -> dual clip caps it at -A * c = 3
    #   A = +1, r = 5:   max(-5, -1.2) = -1.2 -> A > 0, untouched
    #   A = -1, r = 2:   max(2, 1.2) = 2      -> below the cap, untouched
    #   A = +1, r = 0.1: max(-0.1, -0.8) = -0.1 -> would exceed the "cap" -A * c = -3 if A's sign were ignored
    # Without dual clip: (5 - 1.2 + 2 - 0.1) / 4 = 1.425; with it: (3 - 1.2 + 2 - 0.1) / 4 = 0.925.
    inputs = _tokens([5.0, 5.0, 2.0, 0.1], [-1.0, 1.0, -1.0, 1.0])
    plain_loss, plain_metrics = ppo_clip_loss(*inputs)
    assert plain_loss.item() == pytest.approx(1.425)
    assert "dual_clip_fraction" not in plain_metrics

    logprobs_BT = inputs[0]
    loss, metrics = ppo_clip_loss(*inputs, dual_clip=3.0)
    assert loss.item() == pytest.approx(0.925)
    assert metrics["dual_clip_fraction"].item() == pytest.approx(0.25)
    loss.backward()
    # The capped token gets no gradient; A = -1, r = 2 keeps -A * r / 4 = 0.5; A = +1, r = 0.1 keeps -0.025.
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[0.0, 0.0, 0.5, -0.025, 0.0]], dtype=F64))


def test_dual_clip_must_exceed_one() -> None:
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(*_tokens([1.0], [1.0]), dual_clip=1.0)


def test_sequence_advantages_broadcast_over_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    logprobs_BT = 0.1 * torch.randn(4, 6, generator=generator)
    old_logprobs_BT = 0.1 * torch.randn(4, 6, generator=generator)
    advantages_B = torch.randn(4, generator=generator)
    mask_BT = torch.rand(4, 6, generator=generator) < 0.8
    per_sequence, _ = ppo_clip_loss(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT)
    per_token, _ = ppo_clip_loss(logprobs_BT, old_logprobs_BT, advantages_B[:, None].expand(4, 6), mask_BT)
    torch.testing.assert_close(per_sequence, per_token)


@pytest.mark.parametrize("seed", range(4))
def test_ppo_clip_matches_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logprobs_BT = 0.3 * torch.randn(3, 7, generator=generator, dtype=F64)
    old_logprobs_BT = 0.3 * torch.randn(3, 7, generator=generator, dtype=F64)
    advantages_BT = torch.randn(3, 7, generator=generator, dtype=F64)
    mask_BT = torch.rand(3, 7, generator=generator) < 0.7
    low, high, dual = 0.2, 0.28, 3.0
    token_losses, clipped = [], []
    for row in range(3):
        for t in range(7):
            if not mask_BT[row, t]:
                continue
            ratio = math.exp(logprobs_BT[row, t].item() - old_logprobs_BT[row, t].item())
            advantage = advantages_BT[row, t].item()
            surrogate = min(ratio * advantage, min(max(ratio, 1 - low), 1 + high) * advantage)
            clipped.append(surrogate != ratio * advantage)
            if advantage < 0:
                surrogate = max(surrogate, dual * advantage)
            token_losses.append(-surrogate)
    loss, metrics = ppo_clip_loss(
        logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT, clip_eps=low, clip_eps_high=high, dual_clip=dual
    )
    assert loss.item() == pytest.approx(sum(token_losses) / len(token_losses))
    assert metrics["clip_fraction"].item() == pytest.approx(sum(clipped) / len(clipped))


def test_grpo_loss_by_hand() -> None:
    # ratio = 1 everywhere, so the clip term is -A per token: (-1, +1).
    # Reference: token 0 has d = log p - log q = log 2, so k3 = (0.5 - 1) + log 2 = 0.193147; token 1 d = 0.
    # beta = 0.1: token-mean((-1 + 0.1 * 0.193147), (1 + 0)) = 0.0096574.
    # d loss / d logprob_0 = (-A * r + beta * d k3 / d d) / 2 = (-1 + 0.1 * (1 - e^{-d})) / 2 = -0.475.
    logprobs_BT = torch.tensor([[math.log(0.5), math.log(0.5)]], dtype=F64, requires_grad=True)
    old_logprobs_BT = logprobs_BT.detach().clone()
    ref_logprobs_BT = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=F64)
    advantages_B = torch.tensor([1.0], dtype=F64)
    mask_BT = torch.ones(1, 2)
    advantages_BT = torch.tensor([[1.0, -1.0]], dtype=F64)
    loss, metrics = grpo_loss(
        logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT, ref_logprobs_BT=ref_logprobs_BT, beta=0.1
    )
    assert loss.item() == pytest.approx(0.0096574, abs=1e-7)
    assert metrics["kl"].item() == pytest.approx(0.193147 / 2, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[-0.475, 0.5]], dtype=F64))
    # Without a reference and beta = 0 GRPO is PPO clip.
    plain, _ = grpo_loss(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT)
    expected, _ = ppo_clip_loss(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT)
    torch.testing.assert_close(plain, expected)


def test_grpo_loss_needs_reference_for_positive_beta() -> None:
    with pytest.raises(ValueError, match="ref_logprobs_BT"):
        grpo_loss(*_tokens([1.0], [1.0]), beta=0.1)


def test_grpo_loss_uses_the_aggregation_mode() -> None:
    # Two sequences with 1 and 3 valid tokens, ratio 1, advantages +1 and -1 per sequence: token losses
    # (-1) and (1, 1, 1). token-mean = 2 / 4 = 0.5; seq-mean-token-mean = (-1 + 1) / 2 = 0.
    logprobs_BT = torch.zeros(2, 3)
    mask_BT = torch.tensor([[1, 0, 0], [1, 1, 1]])
    advantages_B = torch.tensor([1.0, -1.0])
    token_mean, _ = grpo_loss(logprobs_BT, logprobs_BT, advantages_B, mask_BT)
    seq_mean, _ = grpo_loss(
        logprobs_BT, logprobs_BT, advantages_B, mask_BT, aggregation="seq-mean-token-mean"
    )
    assert token_mean.item() == pytest.approx(0.5)
    assert seq_mean.item() == pytest.approx(0.0)


def test_policy_loss_registry() -> None:
    assert {"grpo", "ppo_clip"} <= set(policy_loss_names())
    assert get_policy_loss("ppo_clip") is ppo_clip_loss
    assert get_policy_loss("grpo") is grpo_loss
    with pytest.raises(ValueError, match="valid: .*grpo, .*ppo_clip"):
        get_policy_loss("ppo-clip")
    with pytest.raises(ValueError, match="registered twice"):
        register_policy_loss("grpo")(ppo_clip_loss)
