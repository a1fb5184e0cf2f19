"""The optimisation loop shared by the token-level training stages (pre-training, SFT, reward model, DPO).

Hand-written rather than `transformers.Trainer` / TRL's `SFTTrainer`: it is short, faster than `SFTTrainer` on
the tiny model (`benchmarks/sft_vs_trl.py`; figures in `benchmarks/results/sft_vs_trl_cpu.json`), and keeps
exact control of three things the pipeline relies on: the loss is normalised by the number of loss tokens in
the whole optimizer step (so batch 8 x 1 and batch 4 x 2 accumulation give the same update), data order is a
pure function of (seed, step) so a run is reproducible, and a non-finite loss or gradient stops the stage at
once with the step named.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from posttrain.config.common import TrainSpec
from posttrain.data.packing import IGNORE_INDEX
from posttrain.training.metrics import MetricsWriter
from posttrain.training.optimizer import OptimizerStep
from posttrain.training.schedule import lr_at, step_rows
from posttrain.training.state import TrainCheckpoints


@dataclass
class LoopResult:
    """What a finished loop reports to its stage."""

    steps: int
    tokens: int
    seconds: float
    skipped_steps: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)

    def summary(self, **extra: Any) -> dict[str, Any]:
        """Fields for the stage manifest."""
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "skipped_steps": self.skipped_steps,
            **extra,
            **{f"final_{k}": v for k, v in self.last_metrics.items()},
        }


def causal_lm_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens, and how many there were."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up, float64 kept
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((labels != IGNORE_INDEX).sum())


def labelled_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens with a label in a causal-LM batch (the first position of a row is never predicted)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def total_steps(spec: TrainSpec, num_rows: int, world_size: int) -> int:
    """Optimizer steps for the configured `steps` or `epochs`."""
    if spec.steps is not None:
        return spec.steps
    per_step = spec.batch_size * spec.grad_accum * world_size
    return max(1, math.ceil(spec.epochs * num_rows / per_step))


def train_loop(
    model: torch.nn.Module,
    rows: list[dict[str, list[int]]],
    spec: TrainSpec,
    *,
    seed: int,
    accelerator: Any,
    metrics: MetricsWriter,
    loss_sum_fn: Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, int]] = causal_lm_loss_sum,
    count_fn: Callable[[dict[str, torch.Tensor]], int] = labelled_token_count,
    step_metrics: Callable[[], dict[str, float]] | None = None,
    checkpoints: TrainCheckpoints | None = None,
    real_tokens: Callable[[dict[str, list[int]]], int] | None = None,
) -> LoopResult:
    """Trains ``model`` on packed ``rows`` for the configured number of optimizer steps.

    Each process takes its share of every optimizer step's global batch; the loss of each micro-batch is
    its summed loss divided by the count (``count_fn``: labelled tokens by default, pairs for preference
    stages) of the whole step across processes. ``step_metrics``, if given, is called once per optimizer
    step and its values are logged with the loop's own. ``checkpoints``, if given, restores a saved training
    state before the first step and saves one every ``save_every`` steps. ``real_tokens(row)``, if given,
    counts a row's positions that are not padding, for ``tokens_per_s`` and the summary's ``tokens``.
    """
    steps = total_steps(spec, len(rows), accelerator.num_processes)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    kernel = OptimizerStep(model, spec, accelerator)
    # positions per row: every `*input_ids` list (pair rows hold a chosen and a rejected sequence)
    row_tokens = sum(len(value) for key, value in rows[0].items() if key.endswith("input_ids"))
    state = _LoopState(started=time.perf_counter(), knows_padding=real_tokens is not None)
    state.window_start = state.started
    first_step = 0
    restored = kernel.restore(checkpoints)
    if restored is not None:
        first_step, state.tokens_seen, state.skipped, state.last = (
            restored["step"], restored["tokens_seen"], restored["skipped"], restored["last"]
        )
        state.real_tokens_seen = restored.get("real_tokens_seen", 0)
    for step in range(first_step, steps):
        indices = step_rows(len(rows), step, spec.batch_size * spec.grad_accum * kernel.world, seed)
        kernel.set_lr(lr_at(step, spec, steps))
        loss_value, step_tokens = _accumulate(kernel, rows, indices, spec, loss_sum_fn, count_fn)
        extra = step_metrics() if step_metrics is not None else {}
        grad_norm = kernel.clip()
        if kernel.skips((loss_value, grad_norm), lambda: _stop_message(loss_value, grad_norm, step, indices, checkpoints)):
            kernel.discard()
            state.skipped += 1
            metrics.log(step + 1, {"loss": loss_value, "grad_norm": grad_norm, "nonfinite_skipped": state.skipped})
        else:
            kernel.step()
            real = sum(real_tokens(rows[i]) for i in indices) if real_tokens is not None else len(indices) * row_tokens
            state.record(len(indices) * row_tokens, real, {
                "loss": loss_value, "grad_norm": grad_norm, "lr": kernel.lr, "loss_tokens": step_tokens, **extra,
            })
            if (step + 1) % spec.log_every == 0 or step + 1 == steps:
                metrics.log(step + 1, state.throughput(), total=steps)
        kernel.save_if_due(checkpoints, step + 1, steps, state.saved())
    return LoopResult(steps, state.real_tokens_seen or state.tokens_seen, time.perf_counter() - state.started,
                      state.skipped, state.last)


@dataclass
class _LoopState:
    """What the loop carries from step to step (and saves in a resumable training state).

    Logged values are those of the last step, except ``loss``: the mean of the steps' losses since the
    previous log line (as TRL and transformers' Trainer log it), so a log line every N steps is not one
    noisy step. ``tokens_per_s`` counts real tokens, not the padding that fills a row's end (when the
    stage says which tokens are padding), and ``padding_share`` is the share of positions that were padding.
    """

    started: float
    tokens_seen: int = 0
    real_tokens_seen: int = 0
    skipped: int = 0
    last: dict[str, float] = field(default_factory=dict)
    window_start: float = 0.0
    window_tokens: int = 0
    window_real: int = 0
    window_losses: list[float] = field(default_factory=list)
    knows_padding: bool = False  # whether the stage said which positions are padding

    def record(self, processed: int, real: int, values: dict[str, float]) -> None:
        """An applied step: ``processed`` positions of which ``real`` were not padding."""
        self.tokens_seen += processed
        self.real_tokens_seen += real
        self.window_tokens += processed
        self.window_real += real
        self.window_losses.append(values["loss"])
        self.last = values

    def throughput(self) -> dict[str, float]:
        """The values to log: the last step's, the window's mean loss, real tokens per second since the
        previous log line and the share of padding."""
        now = time.perf_counter()
        if self.window_losses:
            self.last["loss"] = sum(self.window_losses) / len(self.window_losses)
        self.last["tokens_per_s"] = self.window_real / max(now - self.window_start, 1e-9)
        if self.knows_padding:
            self.last["padding_share"] = 1 - self.window_real / max(self.window_tokens, 1)
        self.window_start, self.window_tokens, self.window_real, self.window_losses = now, 0, 0, []
        return self.last

    def saved(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen, "real_tokens_seen": self.real_tokens_seen, "skipped": self.skipped,
                "last": self.last}


def _accumulate(
    kernel: OptimizerStep,
    rows: list[dict[str, list[int]]],
    indices: list[int],
    spec: TrainSpec,
    loss_sum_fn: Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, int]],
    count_fn: Callable[[dict[str, torch.Tensor]], int],
) -> tuple[float, int]:
    """Backpropagates this process's share of a step's rows in micro-batches; returns the step's global mean
    loss and its count (labelled tokens or pairs, over every process)."""
    accelerator, world = kernel.accelerator, kernel.world
    device = accelerator.device
    local = indices[accelerator.process_index :: world]
    micro_batches = [local[i : i + spec.batch_size] for i in range(0, len(local), spec.batch_size)]
    tensors = [_to_tensors([rows[i] for i in mb], device) for mb in micro_batches]
    step_tokens = torch.tensor(sum(count_fn(t) for t in tensors), device=device)
    if world > 1:
        step_tokens = accelerator.reduce(step_tokens, reduction="sum")
    denominator = max(1, int(step_tokens))
    loss_total = torch.zeros((), device=device, dtype=torch.float64)  # a logged sum: no float32 rounding
    for i, batch in enumerate(tensors):
        with kernel.micro_batch(i, len(tensors)):
            loss_sum, _ = loss_sum_fn(kernel.module, batch)
            # DDP averages gradients over processes; scale so the result is the global token mean
            loss = loss_sum * world / denominator
        kernel.backward(loss)
        loss_total += loss_sum.detach()
    if world > 1:
        loss_total = accelerator.reduce(loss_total, reduction="sum")
    return float(loss_total) / denominator, int(step_tokens)


def _stop_message(
    loss_value: float, grad_norm: float, step: int, indices: list[int], checkpoints: TrainCheckpoints | None
) -> str:
    last_good = checkpoints.last_good() if checkpoints is not None else "train.save_every is not set"
    return (
        f"non-finite loss={loss_value} grad_norm={grad_norm} at step {step + 1} (rows {indices[:8]}...); the update "
        f"was not applied; {last_good}. Lower the learning rate or set train.on_nan: skip"
    )


def _to_tensors(rows: list[dict[str, list[int]]], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([r[key] for r in rows], device=device) for key in rows[0]}
