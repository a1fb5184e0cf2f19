import math

import pytest
import torch

from posttrain.algorithms import AGGREGATION_MODES, aggregate_loss, masked_mean, masked_sum, masked_whiten

NAN = math.nan

# Row 0: three valid tokens, row 1: two, row 2: none. Padding holds junk (including NaN) that must not leak.
LOSS_BT = torch.tensor([[1.0, 2.0, 3.0, NAN], [5.0, 6.0, 100.0, NAN], [7.0, 7.0, 7.0, 7.0]])
MASK_BT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_masked_sum_and_mean_by_hand() -> None:
    assert masked_sum(LOSS_BT, MASK_BT).item() == 17.0  # 1 + 2 + 3 + 5 + 6
    assert masked_mean(LOSS_BT, MASK_BT).item() == pytest.approx(3.4)  # 17 / 5
    torch.testing.assert_close(masked_sum(LOSS_BT, MASK_BT, dim=-1), torch.tensor([6.0, 11.0, 0.0]))
    # The empty row averages to 0, not NaN.
    torch.testing.assert_close(masked_mean(LOSS_BT, MASK_BT, dim=-1), torch.tensor([2.0, 5.5, 0.0]))


def test_masked_whiten_by_hand() -> None:
    # Valid values 1, 2, 3: mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1, so whitened -1, 0, 1.
    values = torch.tensor([1.0, 2.0, 3.0, 50.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False])
    torch.testing.assert_close(
        masked_whiten(values, mask, eps=0.0), torch.tensor([-1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    )
    # Without the mean shift the mean (2) is added back.
    torch.testing.assert_close(
        masked_whiten(values, mask, shift_mean=False, eps=0.0),
        torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 17 / 5),  # all valid tokens / 5 valid tokens
        ("seq-mean-token-sum", (6 + 11) / 2),  # empty row 2 excluded from the sequence mean
        ("seq-mean-token-mean", (6 / 3 + 11 / 2) / 2),
        ("seq-mean-token-sum-norm", (6 / 4 + 11 / 4) / 2),  # max_length = 4
    ],
)
def test_aggregate_loss_by_hand(mode: str, expected: float) -> None:
    loss = aggregate_loss(LOSS_BT, MASK_BT, mode, max_length=4)
    assert loss.item() == pytest.approx(expected)


def _loop_aggregate(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, max_length: int) -> float:
    sequence_values, all_tokens = [], []
    for loss_row, mask_row in zip(loss_BT.tolist(), mask_BT.tolist()):
        tokens = [value for value, keep in zip(loss_row, mask_row) if keep]
        all_tokens.extend(tokens)
        if not tokens:
            continue
        if mode == "seq-mean-token-sum":
            sequence_values.append(sum(tokens))
        elif mode == "seq-mean-token-mean":
            sequence_values.append(sum(tokens) / len(tokens))
        else:
            sequence_values.append(sum(tokens) / max_length)
    if mode == "token-mean":
        return sum(all_tokens) / len(all_tokens) if all_tokens else 0.0
    return sum(sequence_values) / len(sequence_values) if sequence_values else 0.0


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
@pytest.mark.parametrize("seed", range(5))
def test_aggregate_loss_matches_loop(mode: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    loss_BT = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    mask_BT = torch.rand(6, 9, generator=generator) < 0.6
    mask_BT[0] = False  # always include an empty row
    expected = _loop_aggregate(loss_BT, mask_BT, mode, max_length=12)
    assert aggregate_loss(loss_BT, mask_BT, mode, max_length=12).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_all_masked_gives_zero_loss_and_finite_grad(mode: str) -> None:
    loss_BT = torch.full((2, 3), NAN, requires_grad=True)
    loss = aggregate_loss(loss_BT, torch.zeros(2, 3), mode, max_length=3)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(loss_BT.grad, torch.zeros(2, 3))


def test_aggregate_loss_errors() -> None:
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-sum"):
        aggregate_loss(LOSS_BT, MASK_BT, "sequence-mean")
    with pytest.raises(ValueError, match="max_length"):
        aggregate_loss(LOSS_BT, MASK_BT, "seq-mean-token-sum-norm")
