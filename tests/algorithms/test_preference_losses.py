import math

import pytest
import torch

from posttrain.algorithms import bradley_terry_loss, chosen_nll_loss, dpo_loss


def test_bradley_terry_by_hand() -> None:
    # Gaps r_c - r_r = (1, -1): loss = (-log sigmoid(1) - log sigmoid(-1)) / 2 = (0.313262 + 1.313262) / 2.
    chosen_B = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    rejected_B = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss, metrics = bradley_terry_loss(chosen_B, rejected_B)
    assert loss.item() == pytest.approx(0.8132617)
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == 0.0
    assert metrics["chosen_reward"].item() == 1.0 and metrics["rejected_reward"].item() == 1.0
    loss.backward()
    # d loss / d r_c = -(1 - sigmoid(gap)) / B: (-0.134471, -0.365529); d / d r_r is the negation.
    # Minimising raises chosen rewards and lowers rejected ones.
    expected = torch.tensor([-0.1344707, -0.3655293], dtype=torch.float64)
    torch.testing.assert_close(chosen_B.grad, expected)
    torch.testing.assert_close(rejected_B.grad, -expected)
    assert (chosen_B.grad < 0).all() and (rejected_B.grad > 0).all()


def test_bradley_terry_margin_by_hand() -> None:
    # Margin 0.5: logits (0.5, -1.5): (0.474077 + 1.701413) / 2 = 1.087745. Accuracy ignores the margin.
    loss, metrics = bradley_terry_loss(
        torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), margin_B=torch.tensor([0.5, 0.5])
    )
    assert loss.item() == pytest.approx(1.087745, abs=1e-6)
    assert metrics["accuracy"].item() == 0.5


def test_bradley_terry_tie_is_not_accurate() -> None:
    _, metrics = bradley_terry_loss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert metrics["accuracy"].item() == 0.5


def test_dpo_loss_is_log_two_when_policy_equals_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    chosen_B, rejected_B = -10 * torch.rand(2, 8, generator=generator)
    loss, metrics = dpo_loss(chosen_B, rejected_B, chosen_B, rejected_B, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["rewards/margins"].item() == 0.0
    assert metrics["rewards/accuracy"].item() == 0.0  # ties are not wins


def test_dpo_loss_by_hand() -> None:
    # beta 0.1; chosen: policy -10 vs reference -11 -> reward 0.1; rejected: -12 vs -11 -> reward -0.1.
    # z = 0.2: loss = -log sigmoid(0.2) = 0.598139.
    # cDPO with eps 0.1: 0.9 * 0.598139 + 0.1 * (-log sigmoid(-0.2) = 0.798139) = 0.618139.
    policy_chosen = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    policy_rejected = torch.tensor([-12.0], dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([-11.0], dtype=torch.float64, requires_grad=True)
    loss, metrics = dpo_loss(policy_chosen, policy_rejected, reference, reference, beta=0.1)
    assert loss.item() == pytest.approx(0.5981389)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.1)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.1)
    assert metrics["rewards/margins"].item() == pytest.approx(0.2)
    assert metrics["rewards/accuracy"].item() == 1.0
    loss.backward()
    # d loss / d policy_chosen = -beta * (1 - sigmoid(0.2)) = -0.1 * 0.450166; the reference gets none.
    assert policy_chosen.grad.item() == pytest.approx(-0.0450166)
    assert policy_rejected.grad.item() == pytest.approx(0.0450166)
    assert reference.grad is None

    smoothed, _ = dpo_loss(
        policy_chosen, policy_rejected, reference, reference, beta=0.1, label_smoothing=0.1
    )
    assert smoothed.item() == pytest.approx(0.6181389)


def test_dpo_loss_rejects_bad_label_smoothing() -> None:
    zeros = torch.zeros(1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(zeros, zeros, zeros, zeros, beta=0.1, label_smoothing=0.5)


def test_chosen_nll_loss_by_hand() -> None:
    # two chosen responses: log-prob -3 over 2 tokens (1.5 per token) and -1 over 4 tokens (0.25);
    # mean of the per-token NLLs = (1.5 + 0.25) / 2 = 0.875; d/d logp = -1 / (2 * length).
    logps = torch.tensor([-3.0, -1.0], dtype=torch.float64, requires_grad=True)
    loss = chosen_nll_loss(logps, torch.tensor([2, 4]))
    assert loss.item() == pytest.approx(0.875)
    loss.backward()
    assert logps.grad.tolist() == pytest.approx([-0.25, -0.125])
