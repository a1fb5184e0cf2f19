"""Supervised fine-tuning on chat rows (loss on assistant tokens), full or LoRA."""

from __future__ import annotations

from typing import Any

from posttrain.config.sft import SFTConfig
from posttrain.data.loading import load_dataset
from posttrain.data.packing import encode_chats, pack, pad_rows, shuffled
from posttrain.models.checkpoint import apply_lora
from posttrain.stages.base import Stage, register_stage
from posttrain.training.loop import train_loop


@register_stage("sft")
class SFTStage(Stage):
    """Supervised fine-tuning on chat rows, loss on assistant tokens; full or LoRA."""

    config: SFTConfig

    def __init__(self, context):
        super().__init__(context)
        self.load_start_model()
        if self.config.lora is not None:
            self.model = apply_lora(self.model, self.config.lora)

    def train(self) -> dict[str, Any]:
        ctx, spec = self.context, self.config.train
        data = load_dataset(self.config.data, ctx.recipe_dir, ctx.seed)
        chats = [row for row in data.rows if "messages" in row]
        if not chats:
            raise ValueError(f"{data.origin}: SFT needs chat or prompt/completion rows, found only plain text")
        encoded = encode_chats(self.tokenizer, shuffled(chats, ctx.seed), self.config.loss_on_prompt)
        pad = self.tokenizer.pad_token_id
        rows = pack(encoded, spec.seq_len, pad, split_examples=False) if spec.packing else pad_rows(encoded, spec.seq_len, pad)
        result = train_loop(
            self.model, rows, spec, seed=ctx.seed, accelerator=ctx.accelerator, metrics=ctx.metrics,
            checkpoints=ctx.checkpoints,
        )
        return result.summary(packed_rows=len(rows), skipped_data_rows=data.skipped)
