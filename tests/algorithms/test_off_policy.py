import math

import pytest
import torch

from posttrain.algorithms import grpo_loss, ppo_clip_loss
from posttrain.algorithms.off_policy import sampler_trainer_mismatch, truncated_importance_weights, weight_advantages

F64 = torch.float64
LOG = math.log


def _logprobs(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[LOG(p) for p in row] for row in probabilities], dtype=F64)


def test_truncated_importance_weights_by_hand() -> None:
    # trainer / sampler probabilities: 0.5 / 0.25 = 2.0, 0.2 / 0.4 = 0.5, 0.9 / 0.3 = 3.0 -> cut to the cap 2.5
    trainer_BT = _logprobs([[0.5, 0.2, 0.9]])
    sampler_BT = _logprobs([[0.25, 0.4, 0.3]])
    weights_BT, metrics = truncated_importance_weights(trainer_BT, sampler_BT, torch.ones(1, 3, dtype=torch.bool), cap=2.5)
    torch.testing.assert_close(weights_BT, torch.tensor([[2.0, 0.5, 2.5]], dtype=F64))
    assert metrics["tis/weight_mean"].item() == pytest.approx(5.0 / 3.0)
    assert metrics["tis/capped_fraction"].item() == pytest.approx(1.0 / 3.0)
    # padding gets weight 0 and is left out of the means
    weights_BT, metrics = truncated_importance_weights(trainer_BT, sampler_BT, torch.tensor([[True, True, False]]), cap=2.5)
    torch.testing.assert_close(weights_BT, torch.tensor([[2.0, 0.5, 0.0]], dtype=F64))
    assert metrics["tis/weight_mean"].item() == pytest.approx(1.25)
    assert metrics["tis/capped_fraction"].item() == 0.0


def test_truncated_importance_weights_carry_no_gradient_and_reject_bad_cap() -> None:
    trainer_BT = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    weights_BT, _ = truncated_importance_weights(trainer_BT, torch.zeros(1, 2, dtype=F64), torch.ones(1, 2), cap=2.0)
    assert not weights_BT.requires_grad
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(trainer_BT, trainer_BT, torch.ones(1, 2), cap=0.0)


def test_tis_weighted_ppo_loss_by_hand() -> None:
    # Per token, with r = pi_theta / pi_trainer and w = min(pi_trainer / pi_sampler, C), C = 2:
    #   A = +1, r = 1.0, w = 2   ->  w * max(-1.0, -1.0)       = -2.0
    #   A = -1, r = 1.5, w = 0.5 ->  w * max(1.5, 1.2)         =  0.75   (the unclipped term wins)
    #   A = +1, r = 1.5, w = 2 (ratio 4, capped) -> w * max(-1.5, -1.2) = -2.4   (clipped: no gradient)
    # token-mean: (-2.0 + 0.75 - 2.4) / 3 = -1.216666...
    trainer_BT = torch.zeros(1, 3, dtype=F64)
    sampler_BT = torch.tensor([[-LOG(2.0), LOG(2.0), -LOG(4.0)]], dtype=F64)
    logprobs_BT = torch.tensor([[0.0, LOG(1.5), LOG(1.5)]], dtype=F64, requires_grad=True)
    mask_BT = torch.ones(1, 3, dtype=torch.bool)
    weights_BT, _ = truncated_importance_weights(trainer_BT, sampler_BT, mask_BT, cap=2.0)
    advantages_BT = weight_advantages(torch.tensor([[1.0, -1.0, 1.0]], dtype=F64), weights_BT)
    loss, _ = ppo_clip_loss(logprobs_BT, trainer_BT, advantages_BT, mask_BT, clip_eps=0.2)
    assert loss.item() == pytest.approx((-2.0 + 0.75 - 2.4) / 3)
    loss.backward()
    # d/dlogp of w * (-A r) = -w A r: token 1: -2 * 1 * 1 / 3, token 2: -(0.5 * -1 * 1.5) / 3, token 3: clipped
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[-2.0 / 3, 0.25, 0.0]], dtype=F64))


def test_weight_advantages_broadcasts_one_advantage_per_completion() -> None:
    weights_BT = torch.tensor([[1.0, 0.5], [2.0, 0.0]], dtype=F64)
    torch.testing.assert_close(
        weight_advantages(torch.tensor([3.0, -1.0], dtype=F64), weights_BT), torch.tensor([[3.0, 1.5], [-2.0, 0.0]], dtype=F64)
    )


def test_tis_leaves_grpo_kl_term_unweighted() -> None:
    # with A = 0 the surrogate vanishes, so a TIS weight must not change GRPO's loss (beta * KL only)
    logprobs_BT = torch.tensor([[LOG(0.5)]], dtype=F64)
    ref_BT = torch.tensor([[LOG(0.25)]], dtype=F64)
    weights_BT, _ = truncated_importance_weights(torch.zeros(1, 1, dtype=F64), torch.full((1, 1), -1.0, dtype=F64), torch.ones(1, 1), cap=2.0)
    plain, _ = grpo_loss(logprobs_BT, logprobs_BT, torch.zeros(1, dtype=F64), torch.ones(1, 1), ref_BT, beta=0.1)
    weighted, _ = grpo_loss(logprobs_BT, logprobs_BT, weight_advantages(torch.zeros(1, dtype=F64), weights_BT), torch.ones(1, 1), ref_BT, beta=0.1)
    # k3 with r = ref / policy = 0.5: (0.5 - 1) - log 0.5 = 0.19315
    assert plain.item() == pytest.approx(0.1 * (LOG(2.0) - 0.5)) and weighted.item() == plain.item()


def test_sampler_trainer_mismatch_by_hand() -> None:
    # |log 0.5 - log 0.25| = |log 0.2 - log 0.4| = log 2; the padding token's huge gap is ignored.
    # k3 of KL(sampler || trainer), r = trainer / sampler: r = 2: 1 - log 2 = 0.30685; r = 0.5: -0.5 + log 2 = 0.19315
    trainer_BT = _logprobs([[0.5, 0.2, 0.9]])
    sampler_BT = _logprobs([[0.25, 0.4, 1e-9]])
    metrics = sampler_trainer_mismatch(trainer_BT, sampler_BT, torch.tensor([[True, True, False]]))
    assert metrics["rollout/logprob_diff_max"].item() == pytest.approx(LOG(2.0))
    assert metrics["rollout/sampler_kl"].item() == pytest.approx(0.25)
