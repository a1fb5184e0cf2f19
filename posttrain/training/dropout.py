"""Turning dropout off in a model that RL or DPO trains.

RL compares log-probabilities of the same tokens computed at different times (the sampler's, the training
forward's, the reference's): with dropout on, the first PPO/GRPO ratio is not 1 and the clip acts on noise;
DPO's implicit reward is a difference of two such log-probabilities, so its first margin is not 0. TRL
disables dropout in the same places by default (`disable_dropout=True`). With it off, `lora.dropout` has no
effect in RL and DPO stages (it still does in SFT).

Written here rather than imported from TRL: TRL's helper sets `nn.Dropout.p` only, while transformers'
attention modules read a float `attention_dropout` attribute at each forward (Qwen2, Llama, Mistral), which
it leaves on.
"""

from __future__ import annotations

import torch


def disable_dropout(model: torch.nn.Module) -> int:
    """Sets every dropout probability in ``model`` to 0, in place: each ``nn.Dropout`` (LoRA's included) and
    each module's float ``attention_dropout``. Returns how many were above 0."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            module.p = 0.0
            changed += 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout = 0.0
            changed += 1
    return changed
