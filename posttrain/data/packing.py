"""Tokenising chat and text rows, and packing them into fixed-length training sequences.

Packing puts several examples in one row and restarts `position_ids` at each example; transformers
turns restarting position ids into a block-diagonal causal mask (when no attention mask is passed), so
examples never attend to one another. The first token of every example gets no label, so no example is
trained to predict across a boundary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised example: token ids and which of them carry loss."""

    input_ids: list[int]
    loss_mask: list[bool]


class ChatRenderer:
    """Renders conversations with a tokenizer's chat template, compiled once.

    `apply_chat_template` re-validates its arguments on every call, which costs more than tokenising, and
    a stage renders tens of thousands of rows: the template is compiled once instead.
    Falls back to `apply_chat_template` when transformers' template compiler is not importable.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.template = None
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self.template = _compile_jinja_template(tokenizer.chat_template)
            self.special = dict(tokenizer.special_tokens_map)
        except (ImportError, AttributeError, TypeError):
            self.template = None

    def __call__(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        if self.template is None:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], renderer: ChatRenderer | None = None) -> str:
    """The text a model continues to answer: every message up to the last assistant turn."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return (renderer or ChatRenderer(tokenizer))(messages, add_generation_prompt=True)


def _assistant_spans(render: ChatRenderer, messages: list[dict[str, str]], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in the rendered conversation (template-agnostic)."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], add_generation_prompt=True)
        through = full if i == len(messages) - 1 else render(messages[: i + 1])
        if not (full.startswith(through) and through.startswith(before)):
            raise ValueError(
                "the tokenizer's chat template does not render conversations prefix-consistently, so the "
                "assistant tokens cannot be located; set `loss_on_prompt: true` or fix the template"
            )
        spans.append((len(before), len(through)))
    return spans


def encode_chats(
    tokenizer: Any, rows: Sequence[dict[str, Any]], loss_on_prompt: bool = False
) -> list[Encoded]:
    """Tokenises chat rows; the loss mask covers the assistant turns (with their end token)."""
    render = ChatRenderer(tokenizer)
    texts, spans = [], []
    for row in rows:
        full = render(row["messages"])
        texts.append(full)
        spans.append([(0, len(full))] if loss_on_prompt else _assistant_spans(render, row["messages"], full))
    batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    encoded = []
    for ids, offsets, row_spans in zip(batch["input_ids"], batch["offset_mapping"], spans):
        if len(row_spans) == 1:
            lo, hi = row_spans[0]
            mask = [lo <= start < hi for start, _ in offsets]
        else:
            mask = [any(lo <= start < hi for lo, hi in row_spans) for start, _ in offsets]
        encoded.append(Encoded(list(ids), mask))
    return encoded


def encode_raw_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
    """Tokenises (prompt, completion) texts concatenated as they are, as TRL does for a non-conversational
    prompt-completion dataset: the prompt (with the tokenizer's own special tokens, e.g. bos), the completion,
    then eos; the loss mask covers the completion and eos.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("`render: raw` ends each completion with eos, and the tokenizer has none")
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    return [
        Encoded(list(p) + list(c) + [tokenizer.eos_token_id], [False] * len(p) + [True] * (len(c) + 1))
        for p, c in zip(prompts, completions)
    ]


def encode_texts(tokenizer: Any, rows: Sequence[dict[str, Any]], eos_token_id: int) -> list[Encoded]:
    """Tokenises plain-text rows, each ending with an end-of-document token; every token carries loss."""
    batch = tokenizer([row["text"] for row in rows], add_special_tokens=False)
    return [Encoded(list(ids) + [eos_token_id], [True] * (len(ids) + 1)) for ids in batch["input_ids"]]


@dataclass
class Fitted:
    """Examples cut to the sequence length, and how many were cut or left without loss tokens."""

    examples: list[Encoded]
    truncated: int
    emptied: int


def fit_to_length(examples: Sequence[Encoded], seq_len: int) -> Fitted:
    """Cuts examples longer than ``seq_len`` (counted as truncated) and drops those left with no token to
    learn from (counted as emptied): an example whose assistant turn starts after ``seq_len`` tokens would
    otherwise take a row and train on nothing.

    The first token of an example never carries loss (nothing before it predicts it), so it does not count.

    >>> fitted = fit_to_length([Encoded([1, 2, 3], [False, True, True]), Encoded([1, 2, 3], [False, False, True])], 2)
    >>> len(fitted.examples), fitted.truncated, fitted.emptied
    (1, 2, 1)
    """
    kept, truncated, emptied = [], 0, 0
    for example in examples:
        if len(example.input_ids) > seq_len:
            truncated += 1
            example = Encoded(example.input_ids[:seq_len], example.loss_mask[:seq_len])
        if not any(example.loss_mask[1:]):
            emptied += 1
            continue
        kept.append(example)
    return Fitted(kept, truncated, emptied)


def pack(
    examples: Sequence[Encoded], seq_len: int, pad_token_id: int, split_examples: bool
) -> list[dict[str, list[int]]]:
    """Packs examples in order into rows of exactly ``seq_len`` tokens.

    Args:
        examples: tokenised examples, already in the order to train on.
        seq_len: tokens per row; the last row is padded (padding carries no loss).
        pad_token_id: id used for padding.
        split_examples: let an example continue in the next row (pre-training); otherwise an example
            that does not fit starts a new row, and one longer than ``seq_len`` is truncated.

    Returns:
        rows with ``input_ids``, ``labels`` (``IGNORE_INDEX`` where no loss) and ``position_ids``.
    """
    rows: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []

    def flush() -> None:
        nonlocal ids, labels, positions
        if not ids:
            return
        missing = seq_len - len(ids)
        rows.append(
            {
                "input_ids": ids + [pad_token_id] * missing,
                "labels": labels + [IGNORE_INDEX] * missing,
                # padding continues counting so it forms no extra "document" start
                "position_ids": positions + list(range(positions[-1] + 1, positions[-1] + 1 + missing)),
            }
        )
        ids, labels, positions = [], [], []

    for example in examples:
        tokens, mask = example.input_ids, example.loss_mask
        if not split_examples:
            tokens, mask = tokens[:seq_len], mask[:seq_len]
            if len(ids) + len(tokens) > seq_len:
                flush()
        start = 0
        while start < len(tokens):
            room = seq_len - len(ids)
            piece = tokens[start : start + room]
            piece_labels = [t if m else IGNORE_INDEX for t, m in zip(piece, mask[start : start + room])]
            piece_labels[0] = IGNORE_INDEX  # never predict the first token of a row piece from the previous one
            ids += piece
            labels += piece_labels
            positions += list(range(len(piece)))
            start += len(piece)
            if len(ids) == seq_len:
                flush()
    flush()
    return rows


def best_fit_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing (Johnson 1973; TRL's `pack_dataset(strategy="bfd")` packs the same
    way): indices of ``lengths`` grouped into bins of at most ``capacity``, the longest item first, each
    into the fullest bin that still has room. Items longer than ``capacity`` must be cut first.

    >>> best_fit_bins([5, 3, 4, 2, 6], 8)
    [[4, 3], [0, 1], [2]]
    """
    import bisect

    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"item {index} has length {length} > capacity {capacity}")
        at = bisect.bisect_left(rooms, (length, -1))
        if at < len(rooms):
            room, target = rooms.pop(at)
            bins[target].append(index)
            bisect.insort(rooms, (room - length, target))
        else:
            bins.append([index])
            bisect.insort(rooms, (capacity - length, len(bins) - 1))
    return bins


def pack_best_fit(examples: Sequence[Encoded], seq_len: int, pad_token_id: int) -> list[dict[str, list[int]]]:
    """Packs whole examples (cut to ``seq_len`` first, `fit_to_length`) into rows by best-fit decreasing:
    fewer rows and less padding than packing in order; the rows come out in bin order (the training loop
    draws rows in a seeded random order)."""
    examples = [Encoded(e.input_ids[:seq_len], e.loss_mask[:seq_len]) for e in examples]
    bins = best_fit_bins([len(e.input_ids) for e in examples], seq_len)
    return [row for members in bins for row in pack([examples[i] for i in members], seq_len, pad_token_id, False)]


def pad_rows(
    examples: Sequence[Encoded], seq_len: int, pad_token_id: int
) -> list[dict[str, list[int]]]:
    """One example per row (no packing), truncated to ``seq_len`` and right-padded to it."""
    rows = []
    for example in examples:
        tokens, mask = example.input_ids[:seq_len], example.loss_mask[:seq_len]
        missing = seq_len - len(tokens)
        labels = [t if m else IGNORE_INDEX for t, m in zip(tokens, mask)]
        labels[0] = IGNORE_INDEX
        rows.append(
            {
                "input_ids": tokens + [pad_token_id] * missing,
                "labels": labels + [IGNORE_INDEX] * missing,
                "position_ids": list(range(seq_len)),
            }
        )
    return rows


def unpadded_length(row: dict[str, list[int]], pad_token_id: int) -> int:
    """Positions of a packed or padded row before the padding that fills its end (`pack`, `pad_rows`):
    trailing pad tokens without a label. A trailing pad-id token that carries loss (a document separator
    that is also the pad token) is real.

    >>> unpadded_length({"input_ids": [5, 6, 0, 0], "labels": [-100, 6, -100, -100]}, 0)
    2
    """
    ids, labels = row["input_ids"], row["labels"]
    end = len(ids)
    while end > 0 and ids[end - 1] == pad_token_id and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    return end


def shuffled(items: Sequence[Any], seed: int) -> list[Any]:
    """A copy of ``items`` in a seeded random order."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order
