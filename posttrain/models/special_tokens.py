"""Which tokens end a turn, a completion and a document: read from the tokenizer and its chat template.

Three different things that many tokenizers name with one `eos_token`, and many others do not:

- **end of turn**: the token the chat template writes after an assistant message (`<|im_end|>` in
  ChatML, `<|eot_id|>` in Llama 3, `<end_of_turn>` in Gemma, `<|end|>` in Phi-3). An SFT-ed model stops
  there, so sampling and evaluation must stop there too. A Qwen2.5 *base* tokenizer has
  `eos_token = <|endoftext|>` while its template ends turns with `<|im_end|>`: stopping only at eos would
  let every completion run to ``max_new_tokens``.
- **end of sequence**: the model's `generation_config.eos_token_id` (or the tokenizer's eos).
- **document separator**: what pre-training puts between documents. With a chat tokenizer whose eos is the
  end-of-turn token, appending eos teaches "a turn ends after every document"; base tokenizers keep a
  separate `<|endoftext|>` (or a bos token) for this.

The end-of-turn token is derived the way SFT's loss masks derive turns (`posttrain.data.packing`): render
a one-message conversation with the template and take the first special token after the assistant's
content, inside the assistant's span.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# content that no template rewrites (no surrounding whitespace for templates that `trim` it)
_MARKER = "posttrainmarker"
_warned: set[tuple[int, int]] = set()


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special and added tokens (where chat templates' control tokens live)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i in added)
    return ids


def end_of_turn_token_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message's content.

    None when the tokenizer has no chat template, the template fails to render a user/assistant pair,
    or what follows the content is ordinary text (a template that ends turns with a blank line).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    from posttrain.data.packing import ChatRenderer

    render = ChatRenderer(tokenizer)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}]
    try:
        full = render(messages)
    except Exception:  # a template with requirements of its own (tools, system turns): no end-of-turn known
        return None
    end = full.rfind(_MARKER)
    if end < 0:
        return None
    end += len(_MARKER)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    special = _special_ids(tokenizer)
    for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if start < end:
            continue
        if token in special:
            return int(token)
        if full[start:].strip():  # ordinary text before any special token: the template ends turns with text
            return None
    return None


def generation_eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's generation config's end tokens, else the tokenizer's eos (empty when neither names one)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "generation_config", None)
    ids = getattr(config, "eos_token_id", None) if config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a completion: the model's end-of-sequence tokens and the template's end of turn.

    Logs a warning once per (tokenizer eos, end of turn) pair when the end-of-turn token is not the
    tokenizer's eos, since a checkpoint exported elsewhere would stop only at eos.
    """
    ids = generation_eos_ids(model, tokenizer)
    turn = end_of_turn_token_id(tokenizer)
    if turn is not None and turn not in ids:
        ids.append(turn)
    if turn is not None and turn != tokenizer.eos_token_id:
        key = (tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1, turn)
        if key not in _warned:
            _warned.add(key)
            logger.warning(
                "the chat template ends turns with %r (id %d) but the tokenizer's eos is %r: generation stops at "
                "both, and `posttrain export` adds it to generation_config.json",
                tokenizer.convert_ids_to_tokens(turn), turn, tokenizer.eos_token,
            )
    if not ids:
        raise ValueError(
            "neither the model's generation config, the tokenizer nor its chat template names an end token"
        )
    return ids


def document_separator_id(tokenizer: Any, setting: str | None = None) -> int:
    """The token pre-training puts after each document.

    Args:
        tokenizer: the model's tokenizer.
        setting: an explicit token (a recipe's `document_separator`), which must be one token of the vocabulary.

    Without a setting: `<|endoftext|>` when the vocabulary has it, else the eos token unless it is the chat
    template's end of turn, else the bos token, else eos (with a warning that documents will end with the
    end-of-turn token).
    """
    if setting is not None:
        token_id = tokenizer.convert_tokens_to_ids(setting)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id or token_id is None:
            raise ValueError(f"document_separator {setting!r} is not a token of the tokenizer's vocabulary")
        return token_id
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    turn = end_of_turn_token_id(tokenizer)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != turn:
        return int(tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos, bos or <|endoftext|> token; set `document_separator`")
    logger.warning(
        "the tokenizer's only document separator is its eos %r, which the chat template also uses to end turns; "
        "set `document_separator` to a token of its own", tokenizer.eos_token,
    )
    return int(tokenizer.eos_token_id)
