"""Byte-level BPE tokenizers trained offline on the built-in world's text, with the chat conventions of
the model families users fine-tune most (special tokens, eos, bos and templates written after the
families' published `tokenizer_config.json` files, simplified to user/assistant/system turns).

`family_tokenizer(name, vocab_size)` is cached per process: training a 32k vocabulary takes seconds.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }}"
    " [/INST]{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}\n\n{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else 'user' %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3 = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class Convention:
    """A family's tokenizer conventions: its special tokens and which of them are eos/bos/pad/end of turn."""

    template: str
    specials: tuple[str, ...]
    eos: str
    end_of_turn: str
    pad: str
    bos: str | None = None


CONVENTIONS: dict[str, Convention] = {
    # a Qwen2.5 *base* tokenizer: eos is <|endoftext|>, turns end with <|im_end|>
    "qwen_base": Convention(CHATML, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|endoftext|>", "<|im_end|>", "<|endoftext|>"),
    "qwen_instruct": Convention(CHATML, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", "<|im_end|>", "<|endoftext|>"),
    # Llama 3 base: eos <|end_of_text|>, turns end with <|eot_id|>
    "llama3_base": Convention(
        LLAMA3, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|finetune_right_pad_id|>"),
        "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>",
    ),
    "mistral": Convention(MISTRAL, ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), "</s>", "</s>", "<unk>", "<s>"),
    "gemma": Convention(
        GEMMA, ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<eos>", "<end_of_turn>", "<pad>", "<bos>"
    ),
    "phi3": Convention(
        PHI3, ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), "<|endoftext|>", "<|end|>",
        "<|endoftext|>",
    ),
}


def _training_text():
    """The built-in world's text, then a seeded lexicon of made-up words: the world's text alone gives a
    BPE of 1,654 tokens, and the point of these tokenizers is a vocabulary of real size (32k+)."""
    import random

    from posttrain.data.world import tokenizer_training_text

    yield from tokenizer_training_text(0)
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "st", "str"]
    for _ in range(2000):
        yield " ".join("".join(rng.choices(syllables, k=rng.randint(2, 5))) for _ in range(40))


def family_tokenizer(name: str, vocab_size: int = 1024):
    """A fresh copy of the `name` convention's tokenizer: a BPE of ``vocab_size`` learnt tokens, then the
    convention's special tokens (at the end of the vocabulary, as Llama 3's and Qwen's are)."""
    return copy.deepcopy(_family_tokenizer(name, vocab_size))


@functools.lru_cache(maxsize=4)
def _bpe(vocab_size: int) -> str:
    """The byte-level BPE shared by every convention, as JSON (trained once per process: ~10 s for 32k)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    return tokenizer.to_str()


@functools.lru_cache(maxsize=16)
def _family_tokenizer(name: str, vocab_size: int):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    convention = CONVENTIONS[name]
    tokenizer = Tokenizer.from_str(_bpe(vocab_size))
    tokenizer.add_special_tokens(list(convention.specials))
    named = {convention.eos, convention.pad} | ({convention.bos} if convention.bos else set())
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=convention.eos, pad_token=convention.pad, bos_token=convention.bos,
        additional_special_tokens=[t for t in convention.specials if t not in named],
    )
    wrapped.chat_template = convention.template
    return wrapped
