"""The update half of an RL step: ``epochs`` passes over a batch of rollouts in ``mini_batches`` shuffled
mini-batches, one optimizer step each (`posttrain.training.optimizer.OptimizerStep`), log-probabilities
recomputed in training mode and the objective's loss accumulated over micro-batches.

A micro-batch's loss is weighted by its share of the mini-batch's loss count (tokens for ``token-mean``,
completions with tokens for the sequence means) summed over processes, so accumulation gives the
mini-batch's loss exactly; DDP and ZeRO average gradients over processes, hence the factor ``world``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from posttrain.rl.objective import Experience, Objective, SumOverProcesses
from posttrain.rl.policy import sampled_mask, score_completions
from posttrain.training.optimizer import OptimizerStep
from posttrain.training.schedule import lr_at

StopMessage = Callable[[str], str]  # what went non-finite -> the error message (after saving the last good policy)


def loss_count(mask_BC: torch.Tensor, aggregation: str) -> float:
    """What a loss aggregation averages over: tokens (token-mean) or completions with tokens (sequence means)."""
    if aggregation == "token-mean":
        return float(mask_BC.sum())
    return float(mask_BC.any(dim=1).sum())


def stream_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A seed per (run seed, step, process, purpose), the same in every run and process."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) * 7 + stream


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The largest value where ``mask`` is set; 0 if none is."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).max() if values.numel() else values.new_zeros(())


@dataclass
class UpdateTally:
    """Metrics of the optimizer steps on one batch of rollouts, summed as they come."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    updates: int = 0
    entropy_sum: float = 0.0
    entropy_tokens: int = 0
    mismatch: float = 0.0

    def add(self, values: dict[str, Any], weight: float) -> None:
        for name, value in values.items():
            self.sums[name] += float(value) * weight

    def combine(self, world: int, sum_over_processes: SumOverProcesses) -> None:
        """Sums over processes: the losses were weighted by global shares, so their sums are the means."""
        names = sorted(self.sums)
        totals = sum_over_processes(torch.tensor([self.sums[n] for n in names], dtype=torch.float64))
        for name, total in zip(names, totals.tolist()):
            self.sums[name] = total / world if name == "grad_norm" else total
        counts = sum_over_processes(torch.tensor([self.entropy_sum, self.entropy_tokens], dtype=torch.float64))
        self.entropy_sum, self.entropy_tokens = float(counts[0]), int(counts[1])

    def metrics(self) -> dict[str, float]:
        """Per-update means, the first pass's token-mean entropy, and the sampler/training log-prob gap."""
        out = {name: total / max(self.updates, 1) for name, total in self.sums.items()}
        entropy = self.entropy_sum / max(self.entropy_tokens, 1)
        return {**out, "entropy": entropy, "logprob_mismatch": self.mismatch, "updates": self.updates}


class PolicyUpdate:
    """Runs the optimizer steps on one batch of rollouts; counts the updates made and skipped.

    Args:
        kernel: the prepared module and optimizer.
        objective: supplies the loss.
        config: the stage's config (``train``, ``loss_aggregation``).
        temperature: the sampling temperature (log-probabilities are those of the scaled distribution).
        sum_over_processes: the collective that combines counts and metrics.
        seed: the run's seed (mini-batch order is a pure function of seed and step).
    """

    def __init__(
        self, kernel: OptimizerStep, objective: Objective, config: Any, temperature: float,
        sum_over_processes: SumOverProcesses, seed: int,
    ):
        self.kernel, self.objective, self.spec = kernel, objective, config.train
        self.aggregation, self.temperature = config.loss_aggregation, temperature
        self.sum_over_processes, self.seed = sum_over_processes, seed
        self.updates_total = self.spec.steps * self.spec.epochs * self.spec.mini_batches
        self.updates_done = 0
        self.nonfinite_skipped = 0

    def __call__(self, experience: Experience, step: int, kl_coef: float, stop_message: StopMessage) -> dict[str, float]:
        """``epochs`` passes of ``mini_batches`` optimizer steps; returns metrics averaged over the steps."""
        shuffle = torch.Generator().manual_seed(stream_seed(self.seed, step, 0, 1))
        tally = UpdateTally()
        device = self.kernel.accelerator.device
        for epoch in range(self.spec.epochs):
            order = torch.randperm(experience.rewards_B.shape[0], generator=shuffle)
            for rows in order.chunk(self.spec.mini_batches):
                mini = experience.rows(rows.to(device))
                local_count = torch.tensor(loss_count(mini.loss_mask_BC, self.aggregation))
                global_count = float(self.sum_over_processes(local_count))
                if global_count == 0:
                    continue  # every completion here was excluded (on every process): nothing to learn from
                self.kernel.set_lr(lr_at(self.updates_done, self.spec, self.updates_total))
                self.updates_done += 1  # a skipped update keeps its slot in the schedule
                applied = self._accumulate(mini, global_count, tally, epoch == 0, kl_coef, stop_message)
                grad_norm = self.kernel.clip() if applied else None
                if not applied or self.kernel.skips(torch.tensor(grad_norm), lambda: stop_message("gradient norm")):
                    self.kernel.discard()
                    self.nonfinite_skipped += 1
                    continue
                self.kernel.step()
                tally.sums["grad_norm"] += grad_norm
                tally.updates += 1
        if self.kernel.world > 1:
            tally.combine(self.kernel.world, self.sum_over_processes)
        return tally.metrics()

    def _accumulate(
        self, mini: Experience, global_count: float, tally: UpdateTally, first_pass: bool, kl_coef: float,
        stop_message: StopMessage,
    ) -> bool:
        """Backpropagates a mini-batch's loss in micro-batches; False if a loss was non-finite (``on_nan: skip``)."""
        kernel = self.kernel
        micro_size = self.spec.micro_batch_size or mini.rewards_B.shape[0]
        micro_batches = torch.arange(mini.rewards_B.shape[0], device=kernel.accelerator.device).split(micro_size)
        for index, rows in enumerate(micro_batches):
            micro = mini.rows(rows)
            share = loss_count(micro.loss_mask_BC, self.aggregation) / max(global_count, 1.0)
            with kernel.micro_batch(index, len(micro_batches)):
                scores = score_completions(kernel.module, micro, self.temperature, with_entropy=first_pass)
                loss, loss_metrics = self.objective.loss(micro, scores, kl_coef)
            if kernel.skips(loss, lambda: stop_message("loss")):
                return False
            kernel.backward(loss * (share * kernel.world))
            tally.add({"loss": loss.detach(), **loss_metrics}, share)
            mask_BC = sampled_mask(micro)
            if first_pass:
                tally.entropy_sum += float(scores.entropy_BC[mask_BC].sum())
                tally.entropy_tokens += int(mask_BC.sum())
            if tally.updates == 0:  # the weights are still those that sampled: the two log-probs must agree
                gap_BC = (scores.logprobs_BC.detach() - micro.sampler_logprobs_BC).abs()
                tally.mismatch = max(tally.mismatch, float(masked_max(gap_BC, mask_BC)))
        return True
