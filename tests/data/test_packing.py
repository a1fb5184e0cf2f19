"""Tokenising chats (loss on assistant tokens only) and packing examples into fixed-length rows in which
examples cannot see one another."""

from __future__ import annotations

import torch

from posttrain.data.packing import (
    IGNORE_INDEX,
    Encoded,
    encode_chats,
    encode_texts,
    fit_to_length,
    pack,
    pad_rows,
    render_prompt,
    shuffled,
)
from posttrain.data.world import arithmetic_rows

MULTI_TURN = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "8 apples"},
    ]
}


def masked_spans(encoded: Encoded) -> list[list[int]]:
    """Runs of consecutive token ids that carry loss."""
    spans: list[list[int]] = []
    previous = False
    for token, masked in zip(encoded.input_ids, encoded.loss_mask):
        if masked and not previous:
            spans.append([])
        if masked:
            spans[-1].append(token)
        previous = masked
    return spans


def test_encode_chats_masks_exactly_the_assistant_answer_and_its_end_token(micro) -> None:
    _, tokenizer = micro
    rows = arithmetic_rows("train", 6, 0)
    for row, encoded in zip(rows, encode_chats(tokenizer, rows)):
        assert len(encoded.input_ids) == len(encoded.loss_mask)
        spans = masked_spans(encoded)
        assert [tokenizer.decode(span) for span in spans] == [row["messages"][1]["content"] + "<|end|>"]
        # the masked tokens are the tail of the sequence, right after the generation prompt
        prompt = render_prompt(tokenizer, row["messages"])
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert encoded.input_ids[: len(prompt_ids)] == prompt_ids
        assert encoded.loss_mask == [False] * len(prompt_ids) + [True] * (len(encoded.input_ids) - len(prompt_ids))


def test_encode_chats_two_assistant_turns(micro) -> None:
    _, tokenizer = micro
    (encoded,) = encode_chats(tokenizer, [MULTI_TURN])
    spans = masked_spans(encoded)
    assert [tokenizer.decode(span) for span in spans] == ["5<|end|>", "8 apples<|end|>"]
    full = tokenizer.decode(encoded.input_ids)
    assert full == "<|system|>Be brief.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|><|user|>And 4 + 4?<|end|><|assistant|>8 apples<|end|>"


def test_loss_on_prompt_masks_everything(micro) -> None:
    _, tokenizer = micro
    (encoded,) = encode_chats(tokenizer, [MULTI_TURN], loss_on_prompt=True)
    assert all(encoded.loss_mask)


def test_encode_texts_appends_end_of_document(micro) -> None:
    _, tokenizer = micro
    (encoded,) = encode_texts(tokenizer, [{"text": "The sun is warm."}], eos_token_id=7)
    assert encoded.input_ids[-1] == 7 and all(encoded.loss_mask)
    assert tokenizer.decode(encoded.input_ids[:-1]) == "The sun is warm."


def example(start: int, length: int, masked_from: int = 0) -> Encoded:
    return Encoded(list(range(start, start + length)), [i >= masked_from for i in range(length)])


def test_pack_keeps_examples_whole() -> None:
    examples = [example(10, 5), example(20, 4, masked_from=2), example(30, 6), example(40, 3)]
    rows = pack(examples, seq_len=10, pad_token_id=0, split_examples=False)
    assert len(rows) == 2
    assert all(len(row[key]) == 10 for row in rows for key in ("input_ids", "labels", "position_ids"))
    first, second = rows
    assert first["input_ids"] == [10, 11, 12, 13, 14, 20, 21, 22, 23, 0]
    assert first["position_ids"][:9] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    # the first token of every example has no label; so do unmasked tokens and padding
    assert first["labels"] == [IGNORE_INDEX, 11, 12, 13, 14, IGNORE_INDEX, IGNORE_INDEX, 22, 23, IGNORE_INDEX]
    assert second["input_ids"] == [30, 31, 32, 33, 34, 35, 40, 41, 42, 0]
    assert second["position_ids"][:9] == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    assert second["labels"] == [IGNORE_INDEX, 31, 32, 33, 34, 35, IGNORE_INDEX, 41, 42, IGNORE_INDEX]
    # padding continues the last example's positions (so it starts no new "document")
    assert second["position_ids"][9] == 3


def test_pack_truncates_an_example_longer_than_a_row() -> None:
    rows = pack([example(0, 3), example(100, 12)], seq_len=8, pad_token_id=0, split_examples=False)
    assert [row["input_ids"] for row in rows] == [[0, 1, 2, 0, 0, 0, 0, 0], list(range(100, 108))]
    assert rows[1]["labels"] == [IGNORE_INDEX] + list(range(101, 108))


def test_pack_split_examples_continues_long_documents() -> None:
    rows = pack([example(100, 7), example(200, 8)], seq_len=5, pad_token_id=0, split_examples=True)
    assert [row["input_ids"] for row in rows] == [
        [100, 101, 102, 103, 104],
        [105, 106, 200, 201, 202],
        [203, 204, 205, 206, 207],
    ]
    assert rows[1]["position_ids"] == [0, 1, 0, 1, 2]
    assert rows[1]["labels"] == [IGNORE_INDEX, 106, IGNORE_INDEX, 201, 202]
    # every token appears once, none is dropped or padded
    assert sum(token != IGNORE_INDEX for row in rows for token in row["labels"]) == 15 - 4


def test_pad_rows_one_example_per_row() -> None:
    rows = pad_rows([example(10, 3), example(20, 9, masked_from=1)], seq_len=6, pad_token_id=0)
    assert rows[0] == {
        "input_ids": [10, 11, 12, 0, 0, 0],
        "labels": [IGNORE_INDEX, 11, 12, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
        "position_ids": [0, 1, 2, 3, 4, 5],
    }
    assert rows[1]["input_ids"] == [20, 21, 22, 23, 24, 25]


def test_shuffled_is_seeded_and_a_permutation() -> None:
    items = list(range(20))
    assert shuffled(items, 1) == shuffled(items, 1) != shuffled(items, 2)
    assert sorted(shuffled(items, 1)) == items and items == list(range(20))


@torch.no_grad()
def test_packed_example_gives_the_same_logits_as_alone(micro) -> None:
    model, tokenizer = micro
    rows = arithmetic_rows("train", 3, 0)
    examples = encode_chats(tokenizer, rows)
    seq_len = sum(len(e.input_ids) for e in examples) + 5
    (row,) = pack(examples, seq_len, tokenizer.pad_token_id, split_examples=False)
    first, second = len(examples[0].input_ids), len(examples[1].input_ids)
    packed = model(
        input_ids=torch.tensor([row["input_ids"]]), position_ids=torch.tensor([row["position_ids"]]), use_cache=False
    ).logits[0]
    alone = model(input_ids=torch.tensor([examples[1].input_ids]), use_cache=False).logits[0]
    torch.testing.assert_close(packed[first : first + second], alone, rtol=1e-5, atol=1e-5)
    # the check can fail: without restarting positions the second example sees the first
    leaky = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
    assert (leaky[first : first + second] - alone).abs().max() > 1e-3


def test_fit_to_length_counts_cut_examples_and_drops_those_left_without_loss(micro) -> None:
    _, tokenizer = micro
    question = "Ann has 12 cups and gets 5 more. How many cups does Ann have now?"
    rows = [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "17"}]},
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2 " * 40}]},
    ]
    encoded = encode_chats(tokenizer, rows)
    seq_len = len(encoded[0].input_ids) + 2
    assert len(encoded[1].input_ids) > seq_len and encoded[1].loss_mask.index(True) >= seq_len  # the answer is cut off
    fitted = fit_to_length(encoded, seq_len)
    assert (fitted.truncated, fitted.emptied) == (2, 1)
    assert [e.input_ids for e in fitted.examples] == [encoded[0].input_ids, encoded[2].input_ids[:seq_len]]
    assert all(any(e.loss_mask[1:]) for e in fitted.examples)


def test_encode_raw_pairs_concatenates_like_trl(micro) -> None:
    from posttrain.data.packing import encode_raw_pairs

    _, tokenizer = micro
    (example,) = encode_raw_pairs(tokenizer, [("What is 2 + 3?", " 5")])
    prompt = tokenizer("What is 2 + 3?")["input_ids"]
    completion = tokenizer(" 5", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt + completion + [tokenizer.eos_token_id]
    assert example.loss_mask == [False] * len(prompt) + [True] * (len(completion) + 1)


def test_best_fit_packs_tighter_than_in_order_and_keeps_every_example() -> None:
    from posttrain.data.packing import best_fit_bins, pack_best_fit, unpadded_length

    lengths = [5, 5, 3, 3, 6, 2, 6, 2]  # in order: 5 | 5 3 | 3 | 6 2 | 6 2; best fit: 6 2 | 6 2 | 5 3 | 5 3
    examples = [example(100 * i, n) for i, n in enumerate(lengths)]
    in_order = pack(examples, seq_len=8, pad_token_id=0, split_examples=False)
    best = pack_best_fit(examples, seq_len=8, pad_token_id=0)
    assert (len(in_order), len(best)) == (5, 4)  # 32 tokens: 4 rows is the least
    bins = best_fit_bins(lengths, 8)
    assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 8 for members in bins)
    assert sum(unpadded_length(r, 0) for r in best) == sum(lengths)
    # every example's tokens are in some row, contiguous, with positions restarting at 0
    flat = [tuple(r["input_ids"]) for r in best]
    for e in examples:
        assert any(tuple(e.input_ids) == row[k : k + len(e.input_ids)] for row in flat for k in range(8))


def test_the_training_loss_of_a_packed_row_is_its_examples_losses_alone(micro) -> None:
    """What SFT trains on (`causal_lm_loss_sum`, not only the model's forward): a packed row's summed loss is
    the sum of its examples' losses each in a row of its own, so packed examples do not see each other."""
    from posttrain.training.loop import causal_lm_loss_sum

    model, tokenizer = micro
    examples = encode_chats(tokenizer, arithmetic_rows("train", 3, 0))
    seq_len = sum(len(e.input_ids) for e in examples) + 5
    (row,) = pack(examples, seq_len, tokenizer.pad_token_id, split_examples=False)
    as_batch = lambda packed_row: {key: torch.tensor([value]) for key, value in packed_row.items()}  # noqa: E731
    with torch.no_grad():
        packed_sum, packed_count = causal_lm_loss_sum(model, as_batch(row))
        alone = [causal_lm_loss_sum(model, as_batch(pack([e], len(e.input_ids), tokenizer.pad_token_id, split_examples=False)[0])) for e in examples]
    assert packed_count == sum(count for _, count in alone) > 0
    torch.testing.assert_close(packed_sum, sum(loss for loss, _ in alone), rtol=1e-5, atol=1e-5)

