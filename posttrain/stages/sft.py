"""Supervised fine-tuning on chat rows (loss on assistant tokens), full or LoRA."""

from __future__ import annotations

import logging
from typing import Any

from posttrain.config.sft import SFTConfig
from posttrain.data.loading import RAW_TEXT, load_dataset
from posttrain.data.packing import (
    encode_chats, encode_raw_pairs, fit_to_length, pack, pack_best_fit, pad_rows, shuffled, unpadded_length,
)
from posttrain.errors import DataError
from posttrain.models.checkpoint import apply_lora
from posttrain.stages.base import Stage, register_stage
from posttrain.training.loop import train_loop

logger = logging.getLogger(__name__)


@register_stage("sft")
class SFTStage(Stage):
    """Supervised fine-tuning on chat rows, loss on assistant tokens; full or LoRA."""

    config: SFTConfig

    def __init__(self, context):
        super().__init__(context)
        self.load_start_model()
        if self.config.lora is not None:
            self.model = apply_lora(self.model, self.config.lora)

    def _encode(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Chat rows through the chat template; `render: raw` rows as prompt + completion texts."""
        raw = [i for i, row in enumerate(rows) if RAW_TEXT in row]
        if not raw:
            return encode_chats(self.tokenizer, rows, self.config.loss_on_prompt)
        chat = [i for i, row in enumerate(rows) if RAW_TEXT not in row]
        encoded: list[Any] = [None] * len(rows)
        pairs = [(rows[i][RAW_TEXT]["prompt"], rows[i][RAW_TEXT]["completion"]) for i in raw]
        for i, example in zip(raw, encode_raw_pairs(self.tokenizer, pairs)):
            if self.config.loss_on_prompt:
                example.loss_mask = [True] * len(example.loss_mask)
            encoded[i] = example
        if chat:
            for i, example in zip(chat, encode_chats(self.tokenizer, [rows[i] for i in chat], self.config.loss_on_prompt)):
                encoded[i] = example
        return encoded

    def train(self) -> dict[str, Any]:
        ctx, spec = self.context, self.config.train
        data = load_dataset(self.config.data, ctx.recipe_dir, ctx.seed)
        chats = [row for row in data.rows if "messages" in row]
        if not chats:
            raise ValueError(f"{data.origin}: SFT needs chat or prompt/completion rows, found only plain text")
        encoded = self._encode(shuffled(chats, ctx.seed))
        fitted = fit_to_length(encoded, spec.seq_len)
        if fitted.truncated or fitted.emptied:
            logger.warning(
                "%s: %d of %d examples are longer than seq_len %d and were cut; %d of them kept no assistant token "
                "and were dropped", data.origin, fitted.truncated, len(encoded), spec.seq_len, fitted.emptied,
            )
        if not fitted.examples:
            raise DataError(f"{data.origin}: no example keeps an assistant token within seq_len {spec.seq_len}")
        encoded, pad = fitted.examples, self.tokenizer.pad_token_id
        if not spec.packing:
            rows = pad_rows(encoded, spec.seq_len, pad)
        elif spec.packing_strategy == "best_fit":
            rows = pack_best_fit(encoded, spec.seq_len, pad)
        else:
            rows = pack(encoded, spec.seq_len, pad, split_examples=False)
        result = train_loop(
            self.model, rows, spec, seed=ctx.seed, accelerator=ctx.accelerator, metrics=ctx.metrics,
            checkpoints=ctx.checkpoints, real_tokens=lambda row: unpadded_length(row, pad),
        )
        return result.summary(
            packed_rows=len(rows), skipped_data_rows=data.skipped, truncated_examples=fitted.truncated,
            emptied_examples=fitted.emptied,
        )
