import math

import pytest
import torch

from posttrain.algorithms import entropy_from_logits, sequence_logprobs, token_logprobs


def test_token_logprobs_by_hand() -> None:
    # logits log(1, 2, 3, 4) give probabilities (0.1, 0.2, 0.3, 0.4).
    logits_BTV = torch.log(torch.tensor([[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]]))
    labels_BT = torch.tensor([[2, 0, -100]])  # -100 sits under the mask and must not break gather
    mask_BT = torch.tensor([[1, 1, 0]])
    logprobs_BT = token_logprobs(logits_BTV, labels_BT, mask_BT)
    torch.testing.assert_close(logprobs_BT, torch.tensor([[math.log(0.3), math.log(0.1), 0.0]]))
    # Sequence log-prob: log 0.3 + log 0.1 = log 0.03.
    assert sequence_logprobs(logits_BTV, labels_BT, mask_BT).item() == pytest.approx(math.log(0.03))


@pytest.mark.parametrize("seed", range(3))
def test_token_logprobs_match_log_softmax_in_float32(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits_BTV = (5 * torch.randn(3, 4, 50, generator=generator)).to(torch.bfloat16)
    labels_BT = torch.randint(0, 50, (3, 4), generator=generator)
    logprobs_BT = token_logprobs(logits_BTV, labels_BT)
    assert logprobs_BT.dtype == torch.float32
    reference = torch.log_softmax(logits_BTV.float(), dim=-1).gather(-1, labels_BT.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_BT, reference)


def test_token_logprobs_gradient_flows_to_logits() -> None:
    logits_BTV = torch.zeros(1, 1, 4, requires_grad=True)
    token_logprobs(logits_BTV, torch.tensor([[1]])).sum().backward()
    # d log softmax(z)_1 / dz = onehot(1) - softmax(z) = (-0.25, 0.75, -0.25, -0.25)
    torch.testing.assert_close(logits_BTV.grad, torch.tensor([[[-0.25, 0.75, -0.25, -0.25]]]))


def test_entropy_by_hand() -> None:
    # Uniform over 4: log 4. (0.1, 0.2, 0.3, 0.4): -sum p log p = 1.279854.
    # (0, 0, -inf, -inf): banned tokens contribute nothing: log 2, not NaN.
    uniform = [0.0, 0.0, 0.0, 0.0]
    increasing = [math.log(1), math.log(2), math.log(3), math.log(4)]
    banned = [0.0, 0.0, -math.inf, -math.inf]
    logits_BTV = torch.tensor([[uniform, increasing, banned]])
    entropy_BT = entropy_from_logits(logits_BTV)
    torch.testing.assert_close(entropy_BT, torch.tensor([[math.log(4), 1.2798542, math.log(2)]]))


@pytest.mark.parametrize("seed", range(3))
def test_entropy_matches_definition(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits_BTV = 3 * torch.randn(2, 5, 30, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits_BTV, dim=-1)
    expected = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits_BTV), expected)
