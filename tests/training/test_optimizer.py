"""The optimizer step the token-level loop and the RL engine share: the non-finite policy, accumulation that
equals one big batch, and the per-module learning-rate scales."""

from __future__ import annotations

import pytest
import torch

from posttrain.config.common import TrainSpec
from posttrain.errors import NonFiniteLossError
from posttrain.training.optimizer import OptimizerStep


def kernel(accelerator, **overrides) -> OptimizerStep:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    spec = TrainSpec(**{"steps": 1, "lr": 0.1, "max_grad_norm": None, **overrides})
    return OptimizerStep(model, spec, accelerator)


def test_non_finite_values_skip_or_stop_with_the_callers_message(accelerator) -> None:
    skipping = kernel(accelerator, on_nan="skip")
    assert not skipping.skips((1.0, 2.0), lambda: "unused")
    assert not skipping.skips(None, lambda: "unused")
    assert skipping.skips((1.0, float("inf")), lambda: "unused")
    assert skipping.skips(torch.tensor([0.0, float("nan")]), lambda: "unused")
    stopping = kernel(accelerator, on_nan="stop")
    with pytest.raises(NonFiniteLossError, match="the loss of step 3"):
        stopping.skips(torch.tensor(float("nan")), lambda: "the loss of step 3")


def test_two_accumulated_halves_give_the_step_of_the_whole_batch(accelerator) -> None:
    inputs, targets = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.ones(8, 1)
    whole, halves = kernel(accelerator), kernel(accelerator)
    with whole.micro_batch(0, 1):
        loss = torch.nn.functional.mse_loss(whole.module(inputs), targets)
    whole.backward(loss)
    whole.step()
    for index, rows in enumerate((slice(0, 4), slice(4, 8))):
        with halves.micro_batch(index, 2):
            loss = torch.nn.functional.mse_loss(halves.module(inputs[rows]), targets[rows])
        halves.backward(loss / 2)  # each half is half of the whole batch's mean
    halves.step()
    for a, b in zip(whole.module.parameters(), halves.module.parameters()):
        torch.testing.assert_close(a, b)
        assert a.grad is None and b.grad is None  # the step clears the gradients


def test_a_scaled_module_learns_at_its_own_rate(accelerator) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    step = OptimizerStep(model, TrainSpec(steps=1, lr=0.1), accelerator, lr_scales=[(model[1], 10.0)])
    step.set_lr(0.01)
    assert step.lr == 0.01
    assert sorted({group["lr"] for group in step.optimizer.param_groups}) == pytest.approx([0.01, 0.1])
