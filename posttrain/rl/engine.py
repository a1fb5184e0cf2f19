"""The RL loop every RL stage kind shares; `RLEngine.step` is one step, written as the algorithm reads:

1. **Rollout** (`posttrain.rl.sampler`): ``prompts_per_step`` prompts, each ``group_size`` times, sampled
   with the policy's key/value cache; token ids, the sampler's log-probabilities and masks come back.
   With an ``environment:`` each is a whole multi-turn episode (`posttrain.rl.episodes`): the environment's
   tokens sit in the sequence, and only the model's sampled tokens are trained on (loss, KL, log-probs).
2. **Reward** (`posttrain.rl.reward`): the stage's reward entries score the decoded completions; a
   completion cut off before its end token is flagged `truncated` (no positive reward by default), and
   one a verifier could not judge (infrastructure error) is excluded from the loss. With a `dapo:` section
   (`posttrain.rl.dapo`) the rewards are shaped and groups without signal replaced from further prompts.
3. **Reference and values**: the frozen reference's log-probabilities and, when the objective learns
   values, the value head's estimates at rollout time.
4. **KL** to the reference, once per token: the objective's shaped reward, the KL controller and the log
   all read it (it is logged even when its coefficient is 0).
5. **Advantages**: the objective's hook (`posttrain.rl.objective`).
6. **Finite check**: a NaN or inf advantage skips the update (``on_nan: skip``) or stops the stage.
7. **KL coefficient** for the next step (adaptive controller, Ziegler et al., arXiv 1909.08593 §2.2).
8. **Update** (`posttrain.rl.update`): ``epochs`` passes in ``mini_batches`` shuffled mini-batches, one
   optimizer step each, log-probabilities recomputed in training mode; the objective's loss.
9. **Metrics**, averaged over processes.

A NaN or inf in the advantages, a loss or a gradient norm stops the stage within the step; the policy as
it was before the bad update is saved to ``<stage>/last_good`` first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms import AdaptiveKLController, FixedKLController, kl_estimate, masked_sum
from posttrain.algorithms.off_policy import sampler_trainer_mismatch, truncated_importance_weights, weight_advantages
from posttrain.config.rl import RLConfig
from posttrain.distributed import gathered_parameters, is_zero3, mean_metrics_over_processes, sum_over_processes
from posttrain.models.checkpoint import save_checkpoint
from posttrain.rl.dapo import DAPOShaping, Sampled
from posttrain.rl.heldout import HeldoutEvaluation
from posttrain.rl.objective import Experience, Objective
from posttrain.rl.episodes import EpisodeRollout, EpisodeRunner, write_episode_samples
from posttrain.rl.policy import ActorCritic, FrozenReference, ValueHead, sampled_mask, score_completions
from posttrain.rl.prompts import PromptRow, encode_prompts
from posttrain.rl.reward import RewardScorer
from posttrain.rl.rollout_backend import make_rollout_sampler
from posttrain.rl.sampler import Rollout, RowNoise, SamplingSettings, decode_completions
from posttrain.training.dropout import disable_dropout
from posttrain.rl.update import PolicyUpdate, stream_seed
from posttrain.training.metrics import MetricsWriter
from posttrain.training.optimizer import OptimizerStep
from posttrain.training.schedule import step_rows
from posttrain.training.state import TrainCheckpoints


class RLEngine:
    """Trains ``policy`` with ``objective`` on ``prompts`` scored by ``reward``.

    Args:
        config: the stage's config (`posttrain.config.grpo.GRPOConfig`, `posttrain.config.ppo.PPOConfig`).
        policy: the causal LM to train (a peft model when ``config.lora`` is set).
        tokenizer: its tokenizer.
        objective: the stage kind's advantage and loss hooks (`posttrain.rl.objective.Objective`).
        reward: the stage's reward.
        prompts: training prompts.
        accelerator: the pipeline's Accelerate accelerator.
        metrics: where per-step metrics go.
        seed: seeds prompt order and sampling.
        stage_dir: the stage's folder (for ``last_good`` after a non-finite step).
        heldout: held-out evaluation, or None.
        checkpoints: resumable training state (restored before the first step, saved every ``save_every``
            steps, between steps so no rollouts are in flight), or None.
        rollout_backend: ``native`` or ``vllm`` (`posttrain.rl.rollout_backend.resolve_backend`).
    """

    def __init__(
        self, *, config: RLConfig, policy: Any, tokenizer: Any, objective: Objective, reward: RewardScorer,
        prompts: list[PromptRow], accelerator: Any, metrics: MetricsWriter, seed: int, stage_dir: Path,
        heldout: HeldoutEvaluation | None = None, checkpoints: TrainCheckpoints | None = None,
        rollout_backend: str = "native",
    ):
        self.config, self.train_spec = config, config.train
        self.tokenizer, self.objective, self.reward = tokenizer, objective, reward
        self.accelerator, self.metrics, self.seed, self.stage_dir = accelerator, metrics, seed, stage_dir
        self.heldout, self.checkpoints = heldout, checkpoints
        self.group_size = config.group_size
        self.skipped_data_rows = 0
        generation = config.generation
        self.rows, self.prompt_ids, self.dropped_prompts = encode_prompts(tokenizer, prompts, generation.max_prompt_tokens)
        if not self.rows:
            raise ValueError(
                f"stage {config.name!r}: every prompt is longer than generation.max_prompt_tokens "
                f"({generation.max_prompt_tokens} tokens)"
            )
        self.device = accelerator.device
        disable_dropout(policy)  # the sampler, the reference and the training forward must agree (ratio 1 at first)
        value_head = ValueHead(policy.config.hidden_size).to(self.device) if objective.uses_values else None
        self.reference = FrozenReference(policy, uses_lora=config.lora is not None)
        value_lr = getattr(config, "value_lr", None)
        lr_scales = [(value_head, value_lr / self.train_spec.lr)] if value_head is not None and value_lr is not None else []
        self.kernel = OptimizerStep(ActorCritic(policy, value_head), self.train_spec, accelerator, lr_scales)
        self.module, self.optimizer = self.kernel.module, self.kernel.optimizer
        kl = config.kl
        self.kl_controller = (
            AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.controller == "adaptive" else FixedKLController(kl.coef)
        )
        self.sampler = make_rollout_sampler(
            rollout_backend, generation, policy, tokenizer, seed=seed, precision=self.train_spec.precision,
            max_model_len=generation.max_prompt_tokens + generation.max_new_tokens,
        )
        self.settings = SamplingSettings(generation.max_new_tokens, generation.temperature, generation.top_p, generation.top_k)
        self.episodes: EpisodeRunner | None = None  # multi-turn episodes (`environment:`): set by the stage
        self.update = PolicyUpdate(self.kernel, objective, config, generation.temperature, self._sum, seed)
        self._seconds = {"generation": 0.0, "scoring": 0.0}
        dapo = getattr(config, "dapo", None)
        self.dapo = (
            DAPOShaping(dapo, self.group_size, generation.max_new_tokens, tokenizer.pad_token_id, self._sum)
            if dapo is not None else None
        )

    @property
    def policy(self) -> Any:
        """The trained causal LM, unwrapped from Accelerate."""
        return self.accelerator.unwrap_model(self.module).policy

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        return sum_over_processes(self.accelerator, values)

    def train(self) -> dict[str, Any]:
        """Runs every step; returns the stage summary."""
        steps = self.train_spec.steps
        started, completion_tokens = time.perf_counter(), 0
        since_heldout: list[float] = []
        last: dict[str, float] = {}
        first_step = 0
        restored = self.kernel.restore(self.checkpoints)
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
                self._record_episodes("before training")
            for step in range(first_step, steps):
                values = self.step(step)
                completion_tokens += int(values["completion_tokens"])
                since_heldout.append(values["reward/total/mean"])
                if self.heldout is not None and self.heldout.due(step, steps):
                    training_reward = sum(since_heldout) / len(since_heldout)
                    with gathered_parameters(self.accelerator):
                        values.update(self.heldout.evaluate(self.policy, self.tokenizer, step, training_reward))
                    since_heldout = []
                    self._record_episodes(f"after step {step + 1}")
                last = values
                if (step + 1) % self.train_spec.log_every == 0 or step + 1 == steps:
                    self.metrics.log(step + 1, values, total=steps)
                counters = {"completion_tokens": completion_tokens, "since_heldout": since_heldout, "last": last}
                self.kernel.save_if_due(self.checkpoints, step + 1, steps, {**counters, **self._counters()})
        finally:  # reward sources may hold worker processes or models; a vLLM engine holds memory
            self.reward.close()
            self.sampler.close()
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

    def _record_episodes(self, label: str) -> None:
        """The held-out evaluation's first episodes, for the report (stages with an environment)."""
        if self.heldout is not None and self.heldout.last_episodes and self.accelerator.is_main_process:
            write_episode_samples(self.stage_dir, label, self.heldout.last_episodes)

    def _counters(self) -> dict[str, Any]:
        """What the engine carries from step to step, besides weights and optimizer (JSON)."""
        return {
            "updates_done": self.update.updates_done,
            "nonfinite_skipped": self.update.nonfinite_skipped,
            "kl_controller": self.kl_controller.state_dict(),
            "objective": self.objective.state_dict(),
            "heldout_previous": self.heldout.previous if self.heldout is not None else None,
        }

    def _load_counters(self, saved: dict[str, Any]) -> None:
        self.update.updates_done, self.update.nonfinite_skipped = saved["updates_done"], saved["nonfinite_skipped"]
        self.objective.load_state_dict(saved["objective"])
        # states saved before the controller moved to the engine kept PPO's beta with the objective's state
        controller = saved.get("kl_controller", saved["objective"])
        if "kl_coef" in controller:
            self.kl_controller.load_state_dict(controller)
        previous = saved["heldout_previous"]
        # states saved before the per-prompt comparison (2 entries) start the comparison afresh
        if self.heldout is not None and previous is not None and len(previous) == 3:
            self.heldout.previous = tuple(previous)

    def step(self, step: int) -> dict[str, float]:
        """One rollout-and-update iteration; returns its metrics."""
        began = time.perf_counter()
        self._seconds = {"generation": 0.0, "scoring": 0.0}
        # 1. rollout and 2. reward (with DAPO: shaped, and refilled from further prompts)
        sampled = self._sample_and_score(step)
        dapo_metrics: dict[str, float] = {}
        if self.dapo is not None:
            sampled, dapo_metrics = self.dapo.batch(sampled, lambda extra: self._sample_and_score(step, extra))
        rollout, scored = sampled.rollout, sampled.scored
        # generation and scoring alternate under dynamic sampling: their times are sums over rounds
        generated = began + self._seconds["generation"]
        scored_at = generated + self._seconds["scoring"]
        # 3. reference log-probabilities and rollout-time values
        experience = self._experience(
            rollout, scored.rewards_B.to(self.device), scored.excluded_B.to(self.device), sampled.out_of_loss_B.to(self.device)
        )
        # 4. the KL to the reference, once
        kl_BC = kl_estimate(experience.old_logprobs_BC, experience.ref_logprobs_BC, self.config.kl.estimator)
        kl_coef = self.kl_controller.kl_coef
        # 5. advantages
        advantages = self.objective.advantages(experience, kl_BC, kl_coef, self._sum)
        experience.advantages, experience.returns_BC = advantages.advantages, advantages.returns_BC
        values: dict[str, float] = {
            **scored.metrics, **dapo_metrics, **_floats(advantages.metrics), **self._off_policy(experience)
        }
        # 6. finite check: no update can use these rollouts if the advantages are not finite
        if self.kernel.skips(experience.advantages, lambda: self._stop_message("advantages", step)):
            self.update.nonfinite_skipped += 1
            values["updates"] = 0
        else:
            # 7. the KL coefficient for the next step, 8. the update
            values["kl_coef"] = kl_coef
            self._update_kl_coef(kl_BC, experience.loss_mask_BC)
            values.update(self.update(experience, step, kl_coef, lambda what: self._stop_message(what, step)))
            self.sampler.weights_changed()  # a vLLM engine loads the new weights before its next rollout
        # 9. metrics
        values["nonfinite_skipped"] = self.update.nonfinite_skipped
        return self._metrics(values, kl_BC, sampled_mask(experience), rollout, (began, generated, scored_at))

    def _update_kl_coef(self, kl_BC: torch.Tensor, mask_BC: torch.Tensor) -> None:
        """Moves an adaptive beta by this batch's KL per completion (sum over tokens, mean over completions) and
        the global batch's completions (every process's: the controller's n_steps counts samples)."""
        if not isinstance(self.kl_controller, AdaptiveKLController):
            return
        per_completion_B = masked_sum(kl_BC, mask_BC, dim=1)
        has_tokens_B = mask_BC.any(dim=1)
        completions = torch.tensor(float(mask_BC.shape[0]), dtype=kl_BC.dtype, device=kl_BC.device)
        kl_total, with_tokens, rows = self._sum(
            torch.stack([masked_sum(per_completion_B, has_tokens_B), has_tokens_B.sum().to(kl_BC.dtype), completions])
        ).tolist()
        self.kl_controller.update(kl_total / max(with_tokens, 1.0), n_steps=round(rows))

    def _metrics(
        self, values: dict[str, float], kl_BC: torch.Tensor, mask_BC: torch.Tensor, rollout: Rollout,
        times: tuple[float, float, float],
    ) -> dict[str, float]:
        """The step's metrics with the KL (a token mean over the global batch), lengths, throughput and
        timings; every process holds as many completions, so the mean over processes is the global mean."""
        began, generated, scored_at = times
        finished = time.perf_counter()
        tokens = int(sampled_mask(rollout).sum())
        kl_total, kl_tokens = self._sum(torch.stack([masked_sum(kl_BC, mask_BC).double(), mask_BC.sum().double()])).tolist()
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
                "lr": self.kernel.lr,
            }
        )
        return mean_metrics_over_processes(
            self.accelerator, values, summed=("completion_tokens",), maxed=("time/", "logprob_mismatch", "rollout/logprob_diff_max")
        )

    def _sample_and_score(self, step: int, extra_round: int = 0) -> Sampled:
        """This process's prompts of ``step`` (of an extra DAPO round if ``extra_round`` > 0), their completions
        and rewards; a completion cut off before its end token is flagged `truncated` to the reward sources."""
        began = time.perf_counter()
        rows, rollout = self._rollout(step, extra_round)
        generated = time.perf_counter()
        completions = decode_completions(self.tokenizer, rollout.completion_ids_BC, rollout.completion_mask_BC)
        examples = [{**row.example, "truncated": cut} for row, cut in zip(rows, rollout.truncated_B.tolist())]
        if isinstance(rollout, EpisodeRollout):  # the final answers are scored; a failed episode is excluded
            completions, examples = rollout.reward_inputs(examples)
        group_ids = [index // self.group_size for index in range(len(rows))]
        scored = self.reward([row.question for row in rows], completions, examples, step, group_ids)
        if isinstance(rollout, EpisodeRollout):
            scored.excluded_B = scored.excluded_B | rollout.failed_B.to(scored.excluded_B.device)
            scored.metrics.update(rollout.metrics())
        self._seconds["generation"] += generated - began
        self._seconds["scoring"] += time.perf_counter() - generated
        return Sampled(rows, rollout, scored, torch.zeros(len(rows), dtype=torch.bool))

    def _rollout(self, step: int, extra_round: int = 0) -> tuple[list[PromptRow], Rollout]:
        """This process's prompts of ``step``, each repeated ``group_size`` times, and their completions.

        Whole groups stay on one process, so group statistics (GRPO, RLOO) need no communication. Random
        draws follow each completion's place in the global batch (`RowNoise`): N processes sample what one
        process would sample for the whole batch. An extra round draws other prompts and other noise.
        """
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        indices = self._step_prompts(step, extra_round)
        repeated = [index for index in indices for _ in range(self.group_size)]
        global_rows = [(k * world + rank) * self.group_size + g for k in range(len(indices)) for g in range(self.group_size)]
        noise = RowNoise(stream_seed(self._round_seed(extra_round), step, 0, 0), global_rows)
        with gathered_parameters(self.accelerator):
            if self.episodes is not None:
                rollout = self.episodes.run(self.policy, [self.rows[i] for i in repeated], self.settings, noise=noise)
            else:
                rollout = self.sampler.sample(self.policy, [self.prompt_ids[i] for i in repeated], self.settings, noise=noise)
        return [self.rows[i] for i in repeated], rollout

    def _round_seed(self, extra_round: int) -> int:
        """The run's seed for a step's own prompts; another one per extra DAPO round (another prompt order)."""
        return self.seed if extra_round == 0 else self.seed + 7_919 * extra_round

    def _step_prompts(self, step: int, extra_round: int = 0) -> list[int]:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        global_batch = self.train_spec.prompts_per_step * world
        return step_rows(len(self.rows), step, global_batch, self._round_seed(extra_round))[rank::world]

    @torch.no_grad()
    def _experience(
        self, rollout: Rollout, rewards_B: torch.Tensor, excluded_B: torch.Tensor, out_of_loss_B: torch.Tensor
    ) -> Experience:
        """Everything the update needs: reference log-probabilities, rollout-time values, loss mask (without
        excluded completions and those DAPO keeps out of the loss)."""
        temperature = self.settings.temperature
        with self.kernel.autocast():
            ref_logprobs_BC = self.reference.logprobs(self.policy, rollout, temperature)
            old_logprobs_BC, old_values_BC = rollout.logprobs_BC, None
            recompute = self._recomputes_old_logprobs()
            if self.objective.uses_values or recompute:
                scores = score_completions(self.module, rollout, temperature)
                old_values_BC = scores.values_BC
                if recompute:
                    old_logprobs_BC = scores.logprobs_BC
        return Experience(
            sequences_BS=rollout.sequences_BS,
            attention_mask_BS=rollout.attention_mask_BS,
            position_ids_BS=rollout.position_ids_BS,
            completion_ids_BC=rollout.completion_ids_BC,
            completion_mask_BC=rollout.completion_mask_BC,
            loss_mask_BC=sampled_mask(rollout) & ~(excluded_B | out_of_loss_B)[:, None],
            sampled_mask_BC=getattr(rollout, "sampled_mask_BC", None),
            sampler_logprobs_BC=rollout.logprobs_BC,
            old_logprobs_BC=old_logprobs_BC,
            ref_logprobs_BC=ref_logprobs_BC,
            rewards_B=rewards_B,
            excluded_B=excluded_B,
            old_values_BC=old_values_BC,
        )

    def _recomputes_old_logprobs(self) -> bool:
        """The PPO ratio's old log-probs come from the trainer, not the sampler: when asked, when the sampler's
        are another engine's (vLLM), and for truncated importance sampling, which compares the two."""
        spec = self.train_spec
        return spec.old_logprobs == "recompute" or not self.sampler.exact_logprobs or spec.tis_cap is not None

    def _off_policy(self, experience: Experience) -> dict[str, float]:
        """The sampler/trainer log-prob gap and, with ``train.tis_cap``, the truncated importance weights
        applied to the advantages (`posttrain.algorithms.off_policy`); nothing when the two are one."""
        if not self._recomputes_old_logprobs():
            return {}
        trainer_BC, sampler_BC, mask_BC = experience.old_logprobs_BC, experience.sampler_logprobs_BC, experience.loss_mask_BC
        metrics = sampler_trainer_mismatch(trainer_BC, sampler_BC, mask_BC)
        if self.train_spec.tis_cap is not None:
            weights_BC, tis_metrics = truncated_importance_weights(trainer_BC, sampler_BC, mask_BC, self.train_spec.tis_cap)
            experience.advantages = weight_advantages(experience.advantages, weights_BC)
            metrics.update(tis_metrics)
        return _floats(metrics)

    def _stop_message(self, what: str, step: int) -> str:
        """The error of a non-finite value under ``on_nan: stop``, after saving the policy as it was before
        this update (no collective here: not under ZeRO-3, whose shards would need one)."""
        folder = self.stage_dir / "last_good"
        saved = ""
        if self.accelerator.is_main_process and not is_zero3(self.accelerator):
            self.kernel.discard()
            merge = getattr(self.config.lora, "merge", True)
            save_checkpoint(self.policy, self.tokenizer, folder, lora_merge=merge)
            saved = f"; the policy before this update is saved at {folder}"
        if self.checkpoints is not None:
            saved += f"; {self.checkpoints.last_good()}"
        return (
            f"stage {self.config.name!r}: non-finite {what} at step {step + 1} (prompts "
            f"{self._step_prompts(step)[:8]}...){saved}. Lower train.lr, check the reward for NaN/inf, raise clip "
            "settings, or set train.on_nan: skip"
        )


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}
