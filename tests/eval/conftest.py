"""Fixtures of the lm-eval tests: the micro model after a little SFT on one-digit sums."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.packing import encode_chats
from posttrain.data.world import arithmetic_rows


@pytest.fixture(scope="module")
def trained_micro():
    """The micro model after 150 SFT steps on one-digit sums: some answers right, so equal accuracies mean
    something (a random model scores 0 on both)."""
    from posttrain.models.tiny import build_tiny_model

    torch.manual_seed(0)
    model, tokenizer = build_tiny_model("micro", seed=0)
    encoded = encode_chats(tokenizer, arithmetic_rows("train", 2000, 0, (1,)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        batch = [encoded[i] for i in torch.randint(len(encoded), (32,), generator=generator).tolist()]
        width = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for row, example in enumerate(batch):
            ids = torch.tensor(example.input_ids)
            input_ids[row, : len(ids)] = ids
            labels[row, : len(ids)] = torch.where(torch.tensor(example.loss_mask), ids, -100)
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer
