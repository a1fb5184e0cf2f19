"""Reward models: a causal LM's backbone with a one-output score head, in HF sequence-classification form.

The checkpoint is a plain `...ForSequenceClassification` folder with ``num_labels=1`` and the tokenizer's
pad token in ``config.pad_token_id``, so `AutoModelForSequenceClassification.from_pretrained` (and the
``reward_model`` reward source) loads it and reads each text's score at its last non-pad token.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from posttrain.errors import CheckpointError


def is_reward_model_checkpoint(path: str | Path | None) -> bool:
    """Whether a checkpoint folder holds a sequence-classification (reward) model rather than a causal LM."""
    if path is None:
        return False
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def reward_model_from_causal_lm(model: Any, tokenizer: Any) -> Any:
    """A sequence-classification model with ``model``'s backbone weights and a new scalar head.

    Works for any architecture whose causal LM and sequence-classification classes share a backbone
    (`base_model`), such as Qwen2 and Llama. The head is initialised as transformers initialises it.
    """
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    config.architectures = None
    try:
        reward_model = AutoModelForSequenceClassification.from_config(config, dtype=model.dtype)
    except ValueError as err:
        raise CheckpointError(f"{type(model).__name__} has no sequence-classification form: {err}") from None
    reward_model.base_model.load_state_dict(model.base_model.state_dict())
    return reward_model.to(model.device)


def load_reward_model(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """Loads a saved reward model and its tokenizer (safetensors only), ready to score in batches."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not is_reward_model_checkpoint(path):
        raise CheckpointError(f"{path}: not a sequence-classification (reward model) checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True)
    if model.config.num_labels != 1:
        raise CheckpointError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer
