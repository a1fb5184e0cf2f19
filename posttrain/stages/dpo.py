"""Direct preference optimisation (Rafailov et al., arXiv 2305.18290) of a causal LM, full or LoRA.

The reference is the starting model. Its response log-probabilities are computed once before training
(with LoRA: through the same model with its adapters disabled), under the autocast training uses, and
stored with the pairs, so no second model is kept in memory; training then runs the shared loop with
`dpo_loss`. Dropout is off (`posttrain.training.dropout`), so `lora.dropout` does nothing here.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

from posttrain.config.dpo import DPOConfig
from posttrain.data.preferences import encode_pairs, load_preferences
from posttrain.errors import CheckpointError
from posttrain.models.checkpoint import apply_lora
from posttrain.models.reward_head import is_reward_model_checkpoint
from posttrain.stages.base import Stage, register_stage
from posttrain.training.dropout import disable_dropout
from posttrain.training.loop import train_loop
from posttrain.training.optimizer import training_autocast
from posttrain.training.pairs import DPOObjective, add_reference_logprobs, pair_count


def reference_progress(stage: str, metrics: Any, every_s: float = 10.0) -> Callable[[int, int], None]:
    """A `score_pairs` progress callback that prints the reference pass's progress (main process only) at
    most every ``every_s`` seconds and when it ends: a 600-pair run under load spent minutes here silently."""
    started = last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if metrics.is_main and (done == total or now - last >= every_s):
            last = now
            rate = done / max(now - started, 1e-9)
            print(f"[{stage}] reference log-probs: {done}/{total} pairs ({rate:.0f} pairs/s)", file=metrics.stream, flush=True)

    return report


@register_stage("dpo")
class DPOStage(Stage):
    """DPO against the frozen starting model."""

    config: DPOConfig

    def __init__(self, context):
        super().__init__(context)
        if is_reward_model_checkpoint(context.input_checkpoint):
            raise CheckpointError(
                f"stage {self.config.name!r} starts from a reward model ({context.input_checkpoint}); DPO "
                "trains a language model: set `from:` to a language-model stage"
            )
        self.load_start_model()
        if self.config.lora is not None:
            self.model = apply_lora(self.model, self.config.lora)
        disable_dropout(self.model)  # the first margin must be 0: policy and reference forwards agree

    def train(self) -> dict[str, Any]:
        ctx, spec = self.context, self.config.train
        data = load_preferences(self.config.data, ctx.recipe_dir, ctx.seed)
        rows = encode_pairs(self.tokenizer, data.pairs, spec.seq_len)
        # the reference is the starting model: with LoRA, the base weights under disabled adapters; computed
        # under the autocast the policy trains under, so that at step 0 policy and reference agree (loss log 2)
        reference = self.model.disable_adapter() if self.config.lora is not None else nullcontext()
        with reference, training_autocast(spec.precision, ctx.accelerator.device):
            add_reference_logprobs(self.model, rows, spec.batch_size, reference_progress(self.config.name, ctx.metrics))
        objective = DPOObjective(self.config.beta, self.config.label_smoothing, self.config.nll_weight)
        result = train_loop(
            self.model, rows, spec, seed=ctx.seed, accelerator=ctx.accelerator, metrics=ctx.metrics,
            loss_sum_fn=objective, count_fn=pair_count, step_metrics=objective.step_metrics,
            checkpoints=ctx.checkpoints,
        )
        return result.summary(pairs=len(rows), skipped_data_rows=data.skipped)
