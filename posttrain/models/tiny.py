"""The built-in tiny model: a Qwen2-shaped causal LM and a tokenizer built offline from the tiny world.

No hub is reachable in tests or in the quickstart, so the project makes its own model. The tokenizer is
a byte-level BPE trained (with the `tokenizers` library) on text of the built-in world, with every digit
its own token so that arithmetic is learnable by a ~1M-parameter model, and a chat template with role
markers. Training the tokenizer takes about a second and is deterministic for a given seed.
"""

from __future__ import annotations

import functools
from pathlib import Path

SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")

# Each message is `<|role|>content<|end|>`; generation starts after `<|assistant|>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_SIZES: dict[str, dict[str, int]] = {
    # ~0.9M parameters: the quickstart and the tests
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    # ~0.2M parameters: unit tests that only need a model to exist
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1),
}


def build_tokenizer(vocab_size: int = 512, seed: int = 0):
    """Trains the built-in byte-level BPE tokenizer and wraps it as a `PreTrainedTokenizerFast`.

    Built once per process and copied on each call (training it takes about a second).
    """
    import copy

    return copy.deepcopy(_build_tokenizer(vocab_size, seed))


@functools.lru_cache(maxsize=4)
def _build_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from posttrain.data.world import tokenizer_training_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_training_text(seed), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        bos_token=None,
        additional_special_tokens=["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(
    size: str = "tiny", seed: int = 0, vocab_size: int = 512, max_positions: int = 512, init_std: float | None = None
):
    """Returns ``(model, tokenizer)``: a randomly initialised Qwen2 causal LM and the built-in tokenizer.

    ``init_std``: standard deviation of the initial weights (``initializer_range``); default Qwen2's 0.02, a
    value set for models hundreds of times wider. At this width (128) a larger one (0.06) lets attention
    break its initial near-uniform pattern sooner: SFT on the built-in world left its loss plateau after ~300
    steps instead of ~500-1,700 (posttrain/data/world.py).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if size not in TINY_SIZES:
        raise ValueError(f"unknown built-in model size {size!r}; sizes are {sorted(TINY_SIZES)}")
    tokenizer = build_tokenizer(vocab_size, seed)
    end_ids = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_ids,
        bos_token_id=None,
        use_cache=True,
        **TINY_SIZES[size],
        **({} if init_std is None else {"initializer_range": init_std}),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model, tokenizer


def save_tiny_model(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Builds the tiny model and saves it as an ordinary HF folder (for tests and benchmarks)."""
    model, tokenizer = build_tiny_model(size, seed)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
