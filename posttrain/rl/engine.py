"""The RL loop PPO and GRPO share: rollout -> reward -> advantage -> loss -> update, each a library piece.

One step:

1. **Rollout** (`posttrain.rl.sampler`): ``prompts_per_step`` prompts, each ``group_size`` times, sampled
   with the policy's key/value cache; token ids, the sampler's log-probabilities and masks come back.
2. **Reward** (`posttrain.rl.reward`): the stage's reward entries score the decoded completions; a
   completion cut off before its end token is flagged `truncated` (no positive reward by default), and
   one a verifier could not judge (infrastructure error) is excluded from the loss.
3. **Reference and values**: the frozen reference's log-probabilities (the KL is logged even when its
   coefficient is 0) and, for PPO, the value head's estimates at rollout time.
4. **Advantage** (`posttrain.rl.objectives`): group-relative (GRPO, RLOO) or GAE on a KL-shaped reward (PPO).
5. **Update**: ``epochs`` passes over the batch in ``mini_batches`` shuffled mini-batches, one optimizer
   step each, log-probabilities recomputed in training mode; the objective's loss.

A NaN or inf in the advantages, a loss or a gradient norm stops the stage within the step; the policy as
it was before the bad update is saved to ``<stage>/last_good`` first.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms import kl_estimate, masked_sum
from posttrain.config.rl import RLConfig
from posttrain.distributed import (
    clip_gradients,
    gathered_parameters,
    is_zero3,
    mean_metrics_over_processes,
    sum_over_processes,
)
from posttrain.errors import NonFiniteLossError
from posttrain.models.checkpoint import save_checkpoint
from posttrain.rl.heldout import HeldoutEvaluation
from posttrain.rl.objectives import Experience, GRPOObjective, PPOObjective
from posttrain.rl.policy import ActorCritic, FrozenReference, ValueHead, score_completions
from posttrain.rl.prompts import PromptRow, encode_prompts
from posttrain.rl.reward import RewardScorer
from posttrain.rl.sampler import (
    Rollout,
    RolloutSampler,
    RowNoise,
    SamplingSettings,
    decode_completions,
    end_token_ids,
)
from posttrain.training.loop import lr_at, make_optimizer, set_lr, step_rows
from posttrain.training.metrics import MetricsWriter
from posttrain.training.state import TrainCheckpoints


def _loss_count(mask_BC: torch.Tensor, aggregation: str) -> float:
    """What a loss aggregation averages over: tokens (token-mean) or completions with tokens (sequence
    means). A micro-batch's loss weighs its count over the mini-batch's, so accumulation gives the
    mini-batch's loss exactly."""
    if aggregation == "token-mean":
        return float(mask_BC.sum())
    return float(mask_BC.any(dim=1).sum())


class RLEngine:
    """Trains ``policy`` with ``objective`` on ``prompts`` scored by ``reward``.

    Args:
        config: the stage's config (`PPOConfig` or `GRPOConfig`).
        policy: the causal LM to train (a peft model when ``config.lora`` is set).
        tokenizer: its tokenizer.
        objective: `PPOObjective` or `GRPOObjective`.
        reward: the stage's reward.
        prompts: training prompts.
        accelerator: the pipeline's Accelerate accelerator.
        metrics: where per-step metrics go.
        seed: seeds prompt order and sampling.
        stage_dir: the stage's folder (for ``last_good`` after a non-finite step).
        heldout: held-out evaluation, or None.
        checkpoints: resumable training state (restored before the first step, saved every ``save_every``
            steps, between steps so no rollouts are in flight), or None.
    """

    def __init__(
        self,
        *,
        config: RLConfig,
        policy: Any,
        tokenizer: Any,
        objective: PPOObjective | GRPOObjective,
        reward: RewardScorer,
        prompts: list[PromptRow],
        accelerator: Any,
        metrics: MetricsWriter,
        seed: int,
        stage_dir: Path,
        heldout: HeldoutEvaluation | None = None,
        checkpoints: TrainCheckpoints | None = None,
    ):
        self.config, self.train_spec = config, config.train
        self.tokenizer, self.objective, self.reward = tokenizer, objective, reward
        self.accelerator, self.metrics, self.seed, self.stage_dir = accelerator, metrics, seed, stage_dir
        self.heldout, self.checkpoints = heldout, checkpoints
        self.group_size = config.group_size
        self.rows, self.prompt_ids, self.dropped_prompts = encode_prompts(
            tokenizer, prompts, config.generation.max_prompt_tokens
        )
        if not self.rows:
            raise ValueError(
                f"stage {config.name!r}: every prompt is longer than generation.max_prompt_tokens "
                f"({config.generation.max_prompt_tokens} tokens)"
            )
        self.device = accelerator.device
        value_head = None
        if objective.uses_values:
            value_head = ValueHead(policy.config.hidden_size).to(self.device)
        self.reference = FrozenReference(policy, uses_lora=config.lora is not None)
        objective.sum_over_processes = lambda values: sum_over_processes(accelerator, values)
        module = ActorCritic(policy, value_head)
        module.train()
        value_lr = getattr(config, "value_lr", None)
        lr_scales = [(value_head, value_lr / self.train_spec.lr)] if value_head is not None and value_lr is not None else []
        self.module, self.optimizer = accelerator.prepare(module, make_optimizer(module, self.train_spec, lr_scales))
        # our losses are already means over the mini-batch; Accelerate must not divide them again
        accelerator.gradient_accumulation_steps = 1
        generation = config.generation
        self.sampler = RolloutSampler(end_token_ids(policy, tokenizer), tokenizer.pad_token_id, generation.backend)
        self.settings = SamplingSettings(generation.max_new_tokens, generation.temperature, generation.top_p, generation.top_k)
        self.updates_total = self.train_spec.steps * self.train_spec.epochs * self.train_spec.mini_batches
        self.updates_done = 0
        self.nonfinite_skipped = 0
        precision = self.train_spec.precision
        self.use_bf16 = precision == "bf16" or (
            precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )

    @property
    def policy(self) -> Any:
        """The trained causal LM, unwrapped from Accelerate."""
        return self.accelerator.unwrap_model(self.module).policy

    def train(self) -> dict[str, Any]:
        """Runs every step; returns the stage summary."""
        steps = self.train_spec.steps
        started, completion_tokens = time.perf_counter(), 0
        since_heldout: list[float] = []
        last: dict[str, float] = {}
        first_step = 0
        restored = self.checkpoints.restore(self.module, self.optimizer) if self.checkpoints is not None else None
        if restored is not None:
            first_step, completion_tokens, since_heldout, last = (
                restored["step"], restored["completion_tokens"], restored["since_heldout"], restored["last"]
            )
            self._load_counters(restored)
        initial: dict[str, float] = {}
        try:
            if self.heldout is not None and first_step == 0:
                with gathered_parameters(self.accelerator):
                    initial = self.heldout.evaluate_initial(self.policy, self.tokenizer)
                self.metrics.log(0, initial, total=steps)
            for step in range(first_step, steps):
                values = self.step(step)
                completion_tokens += int(values["completion_tokens"])
                since_heldout.append(values["reward/total/mean"])
                if self.heldout is not None and self.heldout.due(step, steps):
                    training_reward = sum(since_heldout) / len(since_heldout)
                    with gathered_parameters(self.accelerator):
                        values.update(self.heldout.evaluate(self.policy, self.tokenizer, step, training_reward))
                    since_heldout = []
                last = values
                if (step + 1) % self.train_spec.log_every == 0 or step + 1 == steps:
                    self.metrics.log(step + 1, values, total=steps)
                if self.checkpoints is not None and self.checkpoints.due(step + 1, steps):
                    counters = {"completion_tokens": completion_tokens, "since_heldout": since_heldout, "last": last}
                    self.checkpoints.save(step + 1, self.module, self.optimizer, {**counters, **self._counters()})
        finally:  # reward sources may hold worker processes or models
            self.reward.close()
            if self.heldout is not None and self.heldout.scorer is not self.reward:
                self.heldout.scorer.close()
        return {
            "steps": steps,
            "completion_tokens": completion_tokens,
            "seconds": round(time.perf_counter() - started, 2),
            "prompts": len(self.rows),
            "dropped_long_prompts": self.dropped_prompts,
            **{f"initial_{k}": v for k, v in initial.items()},
            **{f"final_{k}": v for k, v in last.items() if k.startswith(("reward/total", "heldout/", "kl"))},
        }

    def _counters(self) -> dict[str, Any]:
        """What the engine carries from step to step, besides weights and optimizer (JSON)."""
        return {
            "updates_done": self.updates_done,
            "nonfinite_skipped": self.nonfinite_skipped,
            "objective": self.objective.state_dict(),
            "heldout_previous": self.heldout.previous if self.heldout is not None else None,
        }

    def _load_counters(self, saved: dict[str, Any]) -> None:
        self.updates_done, self.nonfinite_skipped = saved["updates_done"], saved["nonfinite_skipped"]
        self.objective.load_state_dict(saved["objective"])
        if self.heldout is not None and saved["heldout_previous"] is not None:
            self.heldout.previous = tuple(saved["heldout_previous"])

    def step(self, step: int) -> dict[str, float]:
        """One rollout-and-update iteration; returns its metrics."""
        began = time.perf_counter()
        rows, rollout = self._rollout(step)
        generated = time.perf_counter()
        completions = decode_completions(self.tokenizer, rollout.completion_ids_BC, rollout.completion_mask_BC)
        examples = [{**row.example, "truncated": cut} for row, cut in zip(rows, rollout.truncated_B.tolist())]
        group_ids = [index // self.group_size for index in range(len(rows))]
        scored = self.reward([row.question for row in rows], completions, examples, step, group_ids)
        scored_at = time.perf_counter()
        experience = self._experience(rollout, scored.rewards_B.to(self.device), scored.excluded_B.to(self.device))
        values: dict[str, float] = {**scored.metrics, **_floats(self.objective.prepare(experience))}
        try:
            self._check_finite(experience.advantages, "advantages", step)
        except _SkipUpdate:  # no update can use these rollouts
            self.nonfinite_skipped += 1
            values["updates"] = 0
        else:
            values.update(_floats(self.objective.after_rollout(experience)))
            values.update(self._update(experience, step))
        values["nonfinite_skipped"] = self.nonfinite_skipped
        finished = time.perf_counter()
        tokens = int(rollout.completion_mask_BC.sum())
        kl_BC = kl_estimate(experience.old_logprobs_BC, experience.ref_logprobs_BC, self.config.kl.estimator)
        mask_BC = experience.completion_mask_BC
        kl_total, kl_tokens = sum_over_processes(  # a token mean over the global batch
            self.accelerator, torch.stack([masked_sum(kl_BC, mask_BC).double(), mask_BC.sum().double()])
        ).tolist()
        values.update(
            {
                "kl": kl_total / max(kl_tokens, 1.0),
                "response_length": float(rollout.lengths_B.float().mean()),
                "truncated_share": float(rollout.truncated_B.float().mean()),
                "completion_tokens": tokens,
                "tokens_per_s": tokens / max(finished - began, 1e-9),
                "time/generation": generated - began,
                "time/scoring": scored_at - generated,
                "time/update": finished - scored_at,
                "lr": self.optimizer.param_groups[0]["lr"],  # the first group is the policy's (scale 1)
            }
        )
        # every process holds as many completions: the mean over processes is the mean over the global batch
        return mean_metrics_over_processes(
            self.accelerator, values, summed=("completion_tokens",), maxed=("time/", "logprob_mismatch")
        )

    def _rollout(self, step: int) -> tuple[list[PromptRow], Rollout]:
        """This process's prompts of ``step``, each repeated ``group_size`` times, and their completions.

        Whole groups stay on one process, so group statistics (GRPO, RLOO) need no communication. Random
        draws follow each completion's place in the global batch (`RowNoise`): N processes sample what one
        process would sample for the whole batch.
        """
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_step = self.train_spec.prompts_per_step
        indices = step_rows(len(self.rows), step, per_step * world, self.seed)[rank::world]
        repeated = [index for index in indices for _ in range(self.group_size)]
        global_rows = [(k * world + rank) * self.group_size + g for k in range(len(indices)) for g in range(self.group_size)]
        noise = RowNoise(_stream_seed(self.seed, step, 0, 0), global_rows)
        with gathered_parameters(self.accelerator):
            rollout = self.sampler.sample(self.policy, [self.prompt_ids[i] for i in repeated], self.settings, noise=noise)
        return [self.rows[i] for i in repeated], rollout

    @torch.no_grad()
    def _experience(self, rollout: Rollout, rewards_B: torch.Tensor, excluded_B: torch.Tensor) -> Experience:
        """Everything the update needs: reference log-probabilities, rollout-time values, loss mask."""
        temperature = self.settings.temperature
        with self._autocast():
            ref_logprobs_BC = self.reference.logprobs(self.policy, rollout, temperature)
            old_logprobs_BC, old_values_BC = rollout.logprobs_BC, None
            if self.objective.uses_values or self.train_spec.old_logprobs == "recompute":
                scores = score_completions(self.module, rollout, temperature)
                old_values_BC = scores.values_BC
                if self.train_spec.old_logprobs == "recompute":
                    old_logprobs_BC = scores.logprobs_BC
        return Experience(
            sequences_BS=rollout.sequences_BS,
            attention_mask_BS=rollout.attention_mask_BS,
            position_ids_BS=rollout.position_ids_BS,
            completion_ids_BC=rollout.completion_ids_BC,
            completion_mask_BC=rollout.completion_mask_BC,
            loss_mask_BC=rollout.completion_mask_BC & ~excluded_B[:, None],
            sampler_logprobs_BC=rollout.logprobs_BC,
            old_logprobs_BC=old_logprobs_BC,
            ref_logprobs_BC=ref_logprobs_BC,
            rewards_B=rewards_B,
            excluded_B=excluded_B,
            old_values_BC=old_values_BC,
        )

    def _update(self, experience: Experience, step: int) -> dict[str, float]:
        """``epochs`` passes of ``mini_batches`` optimizer steps; returns metrics averaged over the steps."""
        spec = self.train_spec
        shuffle = torch.Generator().manual_seed(_stream_seed(self.seed, step, 0, 1))
        tally = _UpdateTally()
        world = self.accelerator.num_processes
        for epoch in range(spec.epochs):
            order = torch.randperm(experience.rewards_B.shape[0], generator=shuffle)
            for rows in order.chunk(spec.mini_batches):
                mini = experience.rows(rows.to(self.device))
                local_count = torch.tensor(_loss_count(mini.loss_mask_BC, self.config.loss_aggregation))
                global_count = float(sum_over_processes(self.accelerator, local_count))
                if global_count == 0:
                    continue  # every completion here was excluded (on every process): nothing to learn from
                set_lr(self.optimizer, lr_at(self.updates_done, spec, self.updates_total))
                try:
                    self._accumulate_gradients(mini, global_count, tally, first_pass=epoch == 0, step=step)
                    grad_norm = self._clip()
                    self._check_finite(torch.tensor(grad_norm), "gradient norm", step)
                except _SkipUpdate:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.nonfinite_skipped += 1
                    self.updates_done += 1  # the schedule counts the update's slot
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                tally.sums["grad_norm"] += grad_norm
                tally.updates += 1
                self.updates_done += 1
        if world > 1:  # the losses were weighted by global shares: their sums over processes are the means
            names = sorted(tally.sums)
            totals = sum_over_processes(self.accelerator, torch.tensor([tally.sums[n] for n in names], dtype=torch.float64))
            for name, total in zip(names, totals.tolist()):
                tally.sums[name] = total / world if name == "grad_norm" else total
            counts = sum_over_processes(self.accelerator, torch.tensor([tally.entropy_sum, tally.entropy_tokens], dtype=torch.float64))
            tally.entropy_sum, tally.entropy_tokens = float(counts[0]), int(counts[1])
        return tally.metrics()

    def _accumulate_gradients(
        self, mini: Experience, global_count: float, tally: "_UpdateTally", first_pass: bool, step: int
    ) -> None:
        """Backpropagates a mini-batch's loss, in micro-batches whose losses are weighted to add up to it.

        ``global_count`` is the mini-batch's `_loss_count` summed over processes: the mini-batch is the
        union of every process's share, and DDP/ZeRO average gradients over processes, hence the factor
        ``world`` on the loss.
        """
        micro_size = self.train_spec.micro_batch_size or mini.rewards_B.shape[0]
        micro_batches = torch.arange(mini.rewards_B.shape[0], device=self.device).split(micro_size)
        world = self.accelerator.num_processes
        for index, rows in enumerate(micro_batches):
            micro = mini.rows(rows)
            share = _loss_count(micro.loss_mask_BC, self.config.loss_aggregation) / max(global_count, 1.0)
            sync = nullcontext() if index == len(micro_batches) - 1 else self.accelerator.no_sync(self.module)
            with sync, self._autocast():
                scores = score_completions(self.module, micro, self.settings.temperature, with_entropy=first_pass)
                loss, loss_metrics = self.objective.loss(micro, scores)
            self._check_finite(loss, "loss", step)
            self.accelerator.backward(loss * (share * world))
            tally.add({"loss": loss.detach(), **loss_metrics}, share)
            mask_BC = micro.completion_mask_BC
            if first_pass:
                tally.entropy_sum += float(scores.entropy_BC[mask_BC].sum())
                tally.entropy_tokens += int(mask_BC.sum())
            if tally.updates == 0:  # the weights are still those that sampled: the two log-probs must agree
                gap_BC = (scores.logprobs_BC.detach() - micro.sampler_logprobs_BC).abs()
                tally.mismatch = max(tally.mismatch, float(masked_max(gap_BC, mask_BC)))

    def _clip(self) -> float:
        return clip_gradients(self.accelerator, self.module, self.train_spec.max_grad_norm)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _check_finite(self, value: torch.Tensor | None, what: str, step: int) -> None:
        """On NaN/inf: skips the update (``on_nan: skip``, raises `_SkipUpdate`) or stops the stage, after
        saving the policy as it was before this update."""
        if value is None or bool(torch.isfinite(value).all()):
            return
        if self.train_spec.on_nan == "skip":
            raise _SkipUpdate(what)
        folder = self.stage_dir / "last_good"
        saved = ""
        if self.accelerator.is_main_process and not is_zero3(self.accelerator):  # ZeRO-3 shards: no collective here
            self.optimizer.zero_grad(set_to_none=True)
            merge = getattr(self.config.lora, "merge", True)
            save_checkpoint(self.policy, self.tokenizer, folder, lora_merge=merge)
            saved = f"; the policy before this update is saved at {folder}"
        if self.checkpoints is not None:
            saved += f"; {self.checkpoints.last_good()}"
        raise NonFiniteLossError(
            f"stage {self.config.name!r}: non-finite {what} at step {step + 1} (prompts "
            f"{self._step_prompts(step)[:8]}...){saved}. Lower train.lr, check the reward for NaN/inf, raise clip "
            "settings, or set train.on_nan: skip"
        )

    def _step_prompts(self, step: int) -> list[int]:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        return step_rows(len(self.rows), step, self.train_spec.prompts_per_step * world, self.seed)[rank::world]


class _SkipUpdate(Exception):
    """A non-finite value under ``on_nan: skip``: the update it belongs to is not applied."""


@dataclass
class _UpdateTally:
    """Metrics of the optimizer steps on one batch of rollouts, summed as they come."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    updates: int = 0
    entropy_sum: float = 0.0
    entropy_tokens: int = 0
    mismatch: float = 0.0

    def add(self, values: dict[str, Any], weight: float) -> None:
        for name, value in values.items():
            self.sums[name] += float(value) * weight

    def metrics(self) -> dict[str, float]:
        """Per-update means, the first pass's token-mean entropy, and the sampler/training log-prob gap."""
        out = {name: total / max(self.updates, 1) for name, total in self.sums.items()}
        entropy = self.entropy_sum / max(self.entropy_tokens, 1)
        return {**out, "entropy": entropy, "logprob_mismatch": self.mismatch, "updates": self.updates}


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}


def _stream_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A seed per (run seed, step, process, purpose), the same in every run and process."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) * 7 + stream


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The largest value where ``mask`` is set; 0 if none is."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).max() if values.numel() else values.new_zeros(())
