"""Recipe section of `kind: pretrain` (no torch): causal language modelling on plain text, with an optional replay
mix of an earlier corpus; the stage is `posttrain.stages.pretrain`."""

from __future__ import annotations

from pydantic import Field

from posttrain.config.common import DataSpec, Strict, TrainSpec
from posttrain.config.stages import StageConfig, register_stage_config


class ReplaySpec(Strict):
    """Continued pre-training: keep a share of an earlier corpus in the mix against forgetting."""

    data: DataSpec = Field(description="The earlier corpus to replay.")
    ratio: float = Field(gt=0, lt=1, description="Share of training documents drawn from the replay corpus.")


@register_stage_config("pretrain")
class PretrainConfig(StageConfig):
    """Causal language modelling on plain text (pre-training or continued pre-training)."""

    data: DataSpec = Field(description="Corpus with a `text` column (or built-in `builtin:corpus`).")
    replay: ReplaySpec | None = Field(None, description="Optional replay mix of an earlier corpus.")
    train: TrainSpec = Field(description="Optimisation settings.")
    document_separator: str | None = Field(
        None,
        description="Token put after every document (e.g. `<|endoftext|>`, `</s>`). Default: `<|endoftext|>` if "
        "the vocabulary has it, else eos unless the chat template ends turns with it, else bos. Not the chat "
        "end-of-turn token: continued pre-training would teach that a turn ends after every document.",
    )
