"""`disable_dropout`: a model with attention dropout and LoRA dropout gives the same training-mode forward
twice after it (and not before)."""

from __future__ import annotations

import torch

from posttrain.config.common import LoraSpec
from posttrain.models.checkpoint import apply_lora
from posttrain.models.tiny import build_tiny_model
from posttrain.training.dropout import disable_dropout


def _two_forwards(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.arange(5, 17)[None, :]
    model.train()
    with torch.no_grad():
        return model(input_ids=inputs).logits, model(input_ids=inputs).logits


def test_disable_dropout_turns_off_attention_and_lora_dropout() -> None:
    torch.manual_seed(0)
    model, _ = build_tiny_model("micro", seed=0)
    attention = [m for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert attention  # transformers' Qwen2 attention reads this float at each forward
    for module in attention:
        module.attention_dropout = 0.5
    model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.5))
    first, second = _two_forwards(model)
    assert not torch.equal(first, second)
    assert disable_dropout(model) > len(attention)  # the LoRA dropouts too
    first, second = _two_forwards(model)
    assert torch.equal(first, second)
    assert disable_dropout(model) == 0
