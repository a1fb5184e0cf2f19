"""Shared fixtures: a tiny random-init Qwen2 model and tokenizer built locally (no hub access)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

WORDS = [
    "the",
    "answer",
    "is",
    "yes",
    "no",
    "a",
    "b",
    "c",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "+",
    "=",
    "?",
    ":",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_tokenizer(directory: Path):
    """A word-level tokenizer over a 27-word vocabulary, with pad/eos/unk and a chat template, saved to disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["<pad>", "<eos>", "<unk>", "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def qwen2_config(tokenizer, **overrides):
    from transformers import Qwen2Config

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    return Qwen2Config(**settings)


@pytest.fixture
def make_tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_tiny_model("causal_lm" | "reward_model", **config_overrides)` -> saved model directory."""

    def make(kind: str, **overrides: object) -> Path:
        import torch
        from transformers import Qwen2ForCausalLM, Qwen2ForSequenceClassification

        torch.manual_seed(0)
        directory = tmp_path / f"tiny-{kind}-{len(list(tmp_path.iterdir()))}"
        tokenizer = build_tokenizer(directory)
        if kind == "causal_lm":
            model = Qwen2ForCausalLM(qwen2_config(tokenizer, **overrides))
        else:
            model = Qwen2ForSequenceClassification(qwen2_config(tokenizer, **{"num_labels": 1, **overrides}))
        model.save_pretrained(directory)
        return directory

    return make


@pytest.fixture
def tiny_causal_lm(make_tiny_model: Callable[..., Path]) -> Path:
    """Directory with a random-init 2-layer Qwen2ForCausalLM and its tokenizer."""
    return make_tiny_model("causal_lm")


@pytest.fixture
def tiny_reward_model(make_tiny_model: Callable[..., Path]) -> Path:
    """Directory with a random-init Qwen2ForSequenceClassification (scalar head) and its tokenizer."""
    return make_tiny_model("reward_model")
