"""The optimizer step every training loop takes: the token-level loop (pre-training, SFT, reward model, DPO)
and the RL engine.

`OptimizerStep` owns what must not drift between them: the optimizer (AdamW, decay on matrices only,
per-module rate scales), precision (bf16 autocast where asked or supported), gradient accumulation over
micro-batches (gradients synchronised on the last one only), gradient clipping, the non-finite policy
(``train.on_nan``: stop with the caller's message, or skip the update), the step itself, and saving and
restoring the resumable training state. The loops keep what differs: which rows, which loss, and how a
micro-batch's loss is weighted (the caller passes it to `backward` already scaled to its share of the
global mean; DDP and ZeRO average gradients over processes, so that share carries a factor ``world``).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from typing import Any, Callable, ContextManager, Sequence

import torch

from posttrain.distributed import clip_gradients
from posttrain.errors import NonFiniteLossError
from posttrain.training.state import TrainCheckpoints


def make_optimizer(
    model: torch.nn.Module, spec: Any, lr_scales: Sequence[tuple[torch.nn.Module, float]] = ()
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms and biases).

    ``lr_scales``: submodules whose parameters learn at ``scale`` times the schedule's rate (their groups
    carry ``lr_scale``, which `set_lr` applies).
    """
    scaled = {id(p): scale for module, scale in lr_scales for p in module.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = []
    for scale in [1.0, *sorted(set(scaled.values()) - {1.0})]:
        own = [p for p in params if scaled.get(id(p), 1.0) == scale]
        for decay in (True, False):
            chosen = [p for p in own if (p.ndim >= 2) == decay]
            if chosen or scale == 1.0:  # the two unscaled groups always exist (saved optimizer states expect them)
                groups.append({"params": chosen, "weight_decay": spec.weight_decay if decay else 0.0, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every parameter group's rate to ``lr`` times its ``lr_scale`` (1 by default)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """``bf16``, or ``auto`` on a GPU that supports it; CPUs train in fp32."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def training_autocast(precision: str, device: torch.device) -> ContextManager[Any]:
    """The autocast a stage trains under (bf16 where `uses_bf16`); anything compared with the trained model's
    numbers (DPO's reference log-probabilities) is computed under it too."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))


class OptimizerStep:
    """The model and optimizer prepared by Accelerate, and the parts of one optimizer step.

    Args:
        module: the trained module (set to training mode here).
        spec: the stage's training settings (``lr``, ``betas``, ``weight_decay``, ``precision``,
            ``max_grad_norm``, ``on_nan``).
        accelerator: the pipeline's accelerator.
        lr_scales: see `make_optimizer`.
    """

    def __init__(self, module: torch.nn.Module, spec: Any, accelerator: Any, lr_scales: Sequence[tuple[torch.nn.Module, float]] = ()):
        module.train()
        self.spec, self.accelerator = spec, accelerator
        self.module, self.optimizer = accelerator.prepare(module, make_optimizer(module, spec, lr_scales))
        # The loops weight every micro-batch's loss themselves; Accelerate's gradient state is a process-wide
        # singleton that another trainer (TRL's) may have left at N > 1, which would divide once more.
        accelerator.gradient_accumulation_steps = 1
        self.world = accelerator.num_processes
        self.use_bf16 = uses_bf16(spec.precision, accelerator.device)

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    @property
    def lr(self) -> float:
        """The rate of the first parameter group (the policy's, scale 1)."""
        return self.optimizer.param_groups[0]["lr"]

    def autocast(self) -> ContextManager[Any]:
        return training_autocast(self.spec.precision, self.accelerator.device)

    def micro_batch(self, index: int, count: int) -> ContextManager[Any]:
        """The forward of micro-batch ``index`` of ``count``: autocast, and no gradient synchronisation before
        the last one (DDP would otherwise all-reduce after every backward)."""
        stack = ExitStack()
        if index != count - 1:
            stack.enter_context(self.accelerator.no_sync(self.module))
        stack.enter_context(self.autocast())
        return stack

    def backward(self, scaled_loss: torch.Tensor) -> None:
        """Accumulates the gradient of a micro-batch's loss, already scaled to its share of the step."""
        self.accelerator.backward(scaled_loss)

    def clip(self) -> float:
        """Clips the accumulated gradients to ``max_grad_norm`` (if set); returns their norm before clipping."""
        return clip_gradients(self.accelerator, self.module, self.spec.max_grad_norm)

    def skips(self, value: tuple[float, ...] | torch.Tensor | None, stop_message: Callable[[], str]) -> bool:
        """The non-finite policy: False if every value is finite (or ``value`` is None); True if the update is
        to be skipped (``on_nan: skip``); raises `NonFiniteLossError` with ``stop_message()`` under
        ``on_nan: stop``."""
        if value is None:
            return False
        if isinstance(value, tuple):
            finite = all(math.isfinite(number) for number in value)
        else:
            finite = bool(torch.isfinite(value).all())
        if finite:
            return False
        if self.spec.on_nan == "skip":
            return True
        raise NonFiniteLossError(stop_message())

    def step(self) -> None:
        """Applies the accumulated gradients and clears them."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        """Drops the accumulated gradients (a skipped update)."""
        self.optimizer.zero_grad(set_to_none=True)

    def restore(self, checkpoints: TrainCheckpoints | None) -> dict[str, Any] | None:
        """The newest saved training state's values (weights and optimizer restored), or None."""
        return checkpoints.restore(self.module, self.optimizer) if checkpoints is not None else None

    def save_if_due(self, checkpoints: TrainCheckpoints | None, step: int, steps: int, values: dict[str, Any]) -> None:
        """Saves the training state after ``step`` of ``steps`` when ``save_every`` says so."""
        if checkpoints is not None and checkpoints.due(step, steps):
            checkpoints.save(step, self.module, self.optimizer, values)
