"""GSPO's sequence-level ratio and CISPO's clipped stop-gradient weight, against hand-computed examples.

The cross-check against TRL's own `_compute_loss` on random tensors is benchmarks/objectives_vs_trl.py
(tests/algorithms/test_objectives_vs_trl.py runs it)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms import cispo_loss, get_policy_loss, grpo_loss, gspo_loss

F64 = torch.float64


def test_gspo_clips_whole_sequences_by_hand() -> None:
    # sequence 0: token log-ratios 0.3, -0.1 -> s = exp(0.1) = 1.105171 > 1.05, A = +1: clipped, loss -1.05
    # sequence 1: token log-ratios 0.02, 0, -0.02 -> s = exp(0) = 1, A = -2: loss -(-2 * 1) = 2
    # seq-mean-token-mean: (-1.05 + 2) / 2 = 0.475; clip fraction (token-weighted): 2 of 5 tokens
    logprobs_BT = torch.tensor([[0.3, -0.1, 50.0], [0.02, 0.0, -0.02]], dtype=F64, requires_grad=True)
    old_BT = torch.zeros(2, 3, dtype=F64)
    mask_BT = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages_B = torch.tensor([1.0, -2.0], dtype=F64)
    loss, metrics = gspo_loss(logprobs_BT, old_BT, advantages_B, mask_BT, clip_eps=0.05, clip_eps_high=0.05)
    assert loss.item() == pytest.approx(0.475, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 5)
    assert metrics["ratio_max"].item() == pytest.approx(math.exp(0.1))
    # the clipped sequence has no gradient; sequence 1: d(2 s)/d logp_t = 2 * s / 3, over 2 sequences -> 1/3
    loss.backward()
    expected = torch.tensor([[0.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=F64)
    torch.testing.assert_close(logprobs_BT.grad, expected)


def test_gspo_ratio_is_the_geometric_mean_not_the_product() -> None:
    # a long completion whose tokens each drift by +0.01 has s = exp(0.01), inside a 0.02 range: not clipped
    logprobs_BT = torch.full((1, 50), 0.01, dtype=F64)
    loss, metrics = gspo_loss(logprobs_BT, torch.zeros(1, 50, dtype=F64), torch.tensor([1.0], dtype=F64),
                              torch.ones(1, 50), clip_eps=0.02, clip_eps_high=0.02)
    assert loss.item() == pytest.approx(-math.exp(0.01))
    assert metrics["clip_fraction"].item() == 0.0


def test_gspo_with_one_token_per_completion_is_grpo() -> None:
    generator = torch.Generator().manual_seed(0)
    logprobs_BT = torch.randn(6, 1, generator=generator, dtype=F64) * 0.3
    old_BT = torch.randn(6, 1, generator=generator, dtype=F64) * 0.3
    ref_BT = torch.randn(6, 1, generator=generator, dtype=F64) * 0.3
    advantages_B = torch.randn(6, generator=generator, dtype=F64)
    mask_BT = torch.ones(6, 1)
    keywords = dict(ref_logprobs_BT=ref_BT, beta=0.1, clip_eps=0.2, clip_eps_high=0.28, aggregation="seq-mean-token-mean")
    gspo, _ = gspo_loss(logprobs_BT, old_BT, advantages_B, mask_BT, **keywords)
    grpo, _ = grpo_loss(logprobs_BT, old_BT, advantages_B, mask_BT, **keywords)
    torch.testing.assert_close(gspo, grpo, rtol=0, atol=1e-15)


def test_cispo_clips_the_weight_and_keeps_every_gradient_by_hand() -> None:
    # old log-probs 0, so ratio r = exp(logp): r = 2, 0.5, 6 with A = +1, -1, +1; weights clip(r, 0, 5) = 2, 0.5, 5
    # token losses -w * A * logp: -2 ln 2, -(0.5)(-1)(ln 0.5) = -0.5 ln 2, -5 ln 6; token-mean over 3 tokens
    logprobs_BT = torch.tensor([[math.log(2.0), math.log(0.5), math.log(6.0), 9.0]], dtype=F64, requires_grad=True)
    advantages_BT = torch.tensor([[1.0, -1.0, 1.0, 1e6]], dtype=F64)
    mask_BT = torch.tensor([[1, 1, 1, 0]])
    loss, metrics = cispo_loss(logprobs_BT, torch.zeros(1, 4, dtype=F64), advantages_BT, mask_BT, clip_eps=1.0, clip_eps_high=4.0)
    expected = (-2 * math.log(2) - 0.5 * math.log(2) - 5 * math.log(6)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 3)
    # d/dlogp = -w * A / 3: the clipped token (r = 6) still has a gradient, with weight 5 (PPO's clip gives it 0)
    loss.backward()
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[-2 / 3, 0.5 / 3, -5 / 3, 0.0]], dtype=F64))


def test_cispo_lower_bound_and_its_refusal_of_dual_clip() -> None:
    # clip_eps 0.2: a ratio 0.5 is weighted 0.8
    logprobs_BT = torch.tensor([[math.log(0.5)]], dtype=F64)
    loss, _ = cispo_loss(logprobs_BT, torch.zeros(1, 1, dtype=F64), torch.tensor([1.0], dtype=F64), torch.ones(1, 1),
                         clip_eps=0.2, clip_eps_high=0.2)
    assert loss.item() == pytest.approx(-0.8 * math.log(0.5))
    with pytest.raises(ValueError, match="dual_clip"):
        cispo_loss(logprobs_BT, logprobs_BT, torch.tensor([1.0]), torch.ones(1, 1), dual_clip=3.0)


def test_the_new_losses_are_registered() -> None:
    assert get_policy_loss("gspo") is gspo_loss and get_policy_loss("cispo") is cispo_loss
