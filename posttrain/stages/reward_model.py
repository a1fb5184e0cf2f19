"""Reward modelling: a scalar head on the starting model's backbone, trained on preference pairs.

The loss is Bradley–Terry (`posttrain.algorithms.preference_losses.bradley_terry_loss`) on the scores of
the chosen and rejected texts; the checkpoint is an HF sequence-classification model (see
`posttrain.models.reward_head`) that `AutoModelForSequenceClassification.from_pretrained` and the
``reward_model`` reward source load.
"""

from __future__ import annotations

from typing import Any

from posttrain.config.reward_model import RewardModelConfig
from posttrain.data.preferences import encode_pairs, load_preferences
from posttrain.models.checkpoint import apply_lora
from posttrain.models.reward_head import (
    is_reward_model_checkpoint,
    load_reward_model,
    reward_model_from_causal_lm,
)
from posttrain.stages.base import Stage, register_stage
from posttrain.training.loop import train_loop
from posttrain.training.pairs import BradleyTerryObjective, pair_count


@register_stage("reward_model")
class RewardModelStage(Stage):
    """Trains a pairwise reward model, full or LoRA, from a causal LM (or a reward model) checkpoint."""

    config: RewardModelConfig

    def __init__(self, context):
        super().__init__(context)
        device = str(context.accelerator.device)
        if is_reward_model_checkpoint(context.input_checkpoint):
            self.model, self.tokenizer = load_reward_model(context.input_checkpoint, device)
        else:
            self.load_start_model()
            self.model = reward_model_from_causal_lm(self.model, self.tokenizer)
        if self.config.lora is not None:
            self.model = apply_lora(self.model, self.config.lora, task_type="SEQ_CLS")

    def train(self) -> dict[str, Any]:
        ctx, spec = self.context, self.config.train
        data = load_preferences(self.config.data, ctx.recipe_dir, ctx.seed)
        pairs = data.pairs
        rows = encode_pairs(self.tokenizer, pairs, spec.seq_len)
        for pair, row in zip(pairs, rows):
            row["margin"] = pair.margin if pair.margin is not None else self.config.margin
        uses_margin = any(row["margin"] for row in rows)
        objective = BradleyTerryObjective(margin_key="margin" if uses_margin else None)
        result = train_loop(
            self.model, rows, spec, seed=ctx.seed, accelerator=ctx.accelerator, metrics=ctx.metrics,
            loss_sum_fn=objective, count_fn=pair_count, step_metrics=objective.step_metrics,
            checkpoints=ctx.checkpoints,
        )
        return result.summary(pairs=len(rows), skipped_data_rows=data.skipped)
