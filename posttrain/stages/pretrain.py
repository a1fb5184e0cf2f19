"""Pre-training and continued pre-training (causal LM on text, with an optional replay mix)."""

from __future__ import annotations

import random
from typing import Any

from posttrain.config.pretrain import PretrainConfig
from posttrain.data.loading import load_dataset
from posttrain.data.packing import encode_texts, pack, shuffled, unpadded_length
from posttrain.models.special_tokens import document_separator_id
from posttrain.stages.base import Stage, register_stage
from posttrain.training.loop import train_loop


@register_stage("pretrain")
class PretrainStage(Stage):
    """Causal LM on text. With ``replay``, a share of documents comes from an earlier corpus."""

    config: PretrainConfig

    def __init__(self, context):
        super().__init__(context)
        self.load_start_model()

    def _documents(self) -> tuple[list[dict[str, Any]], int]:
        ctx = self.context
        data = load_dataset(self.config.data, ctx.recipe_dir, ctx.seed)
        rows, skipped = data.rows, data.skipped
        if self.config.replay is not None:
            replay = load_dataset(self.config.replay.data, ctx.recipe_dir, ctx.seed)
            ratio = self.config.replay.ratio
            # replay documents so they make up `ratio` of the mix: r / (n + r) = ratio
            wanted = round(len(rows) * ratio / (1 - ratio))
            rng = random.Random(f"replay/{ctx.seed}")
            replayed = [replay.rows[rng.randrange(len(replay.rows))] for _ in range(wanted)]
            rows, skipped = rows + replayed, skipped + replay.skipped
        return shuffled(rows, ctx.seed), skipped

    def train(self) -> dict[str, Any]:
        documents, skipped = self._documents()
        separator = document_separator_id(self.tokenizer, self.config.document_separator)
        encoded = encode_texts(self.tokenizer, documents, separator)
        spec = self.config.train
        rows = pack(encoded, spec.seq_len, self.tokenizer.pad_token_id, split_examples=True)
        result = train_loop(
            self.model, rows, spec, seed=self.context.seed, accelerator=self.context.accelerator,
            metrics=self.context.metrics, checkpoints=self.context.checkpoints,
            real_tokens=lambda row: unpadded_length(row, self.tokenizer.pad_token_id),
        )
        return result.summary(packed_rows=len(rows), skipped_data_rows=skipped)
