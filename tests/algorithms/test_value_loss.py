import pytest
import torch

from posttrain.algorithms import clipped_value_loss


def test_clipped_value_loss_by_hand() -> None:
    # clip_eps = 0.2, old value 0.5, return 1.0 for every token; v_clipped = 0.5 + clip(v - 0.5, -0.2, 0.2).
    #   v = 1.0: v_clipped = 0.7, errors (0, 0.09)  -> 0.5 * 0.09 = 0.045  clipped term wins (no gradient)
    #   v = 0.6: v_clipped = 0.6, errors (0.16, 0.16) -> 0.08             not clipped
    #   v = 0.0: v_clipped = 0.3, errors (1.0, 0.49)  -> 0.5              unclipped term wins
    # token-mean = (0.045 + 0.08 + 0.5) / 3 = 0.208333; value_clip_fraction = 1 / 3.
    values_BT = torch.tensor([[1.0, 0.6, 0.0, 7.0]], dtype=torch.float64, requires_grad=True)
    old_values_BT = torch.full((1, 4), 0.5, dtype=torch.float64)
    returns_BT = torch.full((1, 4), 1.0, dtype=torch.float64)
    mask_BT = torch.tensor([[1, 1, 1, 0]])
    loss, metrics = clipped_value_loss(values_BT, old_values_BT, returns_BT, mask_BT, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.625 / 3)
    assert metrics["value_clip_fraction"].item() == pytest.approx(1 / 3)
    assert metrics["value_mean"].item() == pytest.approx(1.6 / 3)
    loss.backward()
    # d/dv of 0.5 (v - R)^2 / 3 = (v - R) / 3 where unclipped wins; 0 where the clipped term wins.
    expected_grad = torch.tensor([[0.0, -0.4 / 3, -1.0 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(values_BT.grad, expected_grad)


def test_clipped_value_loss_matches_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    values_BT, old_values_BT, returns_BT = torch.randn(3, 3, 5, generator=generator, dtype=torch.float64)
    mask_BT = torch.rand(3, 5, generator=generator) < 0.7
    clip_eps = 0.3
    losses = []
    rows = zip(values_BT.flatten(), old_values_BT.flatten(), returns_BT.flatten(), mask_BT.flatten())
    for v, old, ret, keep in rows:
        if keep:
            v_clipped = old + min(max(v - old, -clip_eps), clip_eps)
            losses.append(0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2).item())
    loss, _ = clipped_value_loss(values_BT, old_values_BT, returns_BT, mask_BT, clip_eps)
    assert loss.item() == pytest.approx(sum(losses) / len(losses))
