"""Evaluators run after every stage: exact-match accuracy with greedy decoding, and perplexity.

Each evaluator is a function ``(model, tokenizer, rows, config) -> dict of metrics`` registered by name;
the pipeline prefixes metric names with the evaluation's name (``arithmetic.accuracy``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from posttrain.config.evaluation import EvalConfig
from posttrain.data.loading import RAW_TEXT
from posttrain.data.packing import IGNORE_INDEX, ChatRenderer, encode_texts, pack, render_prompt
from posttrain.models.special_tokens import document_separator_id, stop_token_ids
from posttrain.registry import EVALUATORS
from posttrain.verifiers.math_answer import answers_match

Evaluator = Callable[[Any, Any, list[dict[str, Any]], EvalConfig], dict[str, float]]
# the built-in kinds are listed in `posttrain.registry.EVALUATORS` too, so recipes are checked without torch
register_evaluator = EVALUATORS.register
evaluator = EVALUATORS.get


@torch.no_grad()
def greedy_generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
    special_tokens: list[bool] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded batches, stopping at the model's end tokens and the
    chat template's end of turn). ``special_tokens``: per prompt, whether tokenising adds the tokenizer's own
    special tokens (bos), as for `render: raw` prompts; default none (a rendered chat template has its own)."""
    model.eval()
    device = next(model.parameters()).device
    stop_ids = stop_token_ids(model, tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            flags = special_tokens[start : start + batch_size] if special_tokens else [False] * len(chunk)
            ids = [tokenizer(text, add_special_tokens=flag)["input_ids"] for text, flag in zip(chunk, flags)]
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
            generated = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop_ids,
            )
            new = generated[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outputs


@register_evaluator("exact_match")
def exact_match(model: Any, tokenizer: Any, rows: list[dict[str, Any]], config: EvalConfig) -> dict[str, float]:
    """Share of rows whose greedy answer matches the row's ``answer`` under the ``match`` policy (the math
    reward's answer extraction, `posttrain.verifiers.math_answer.answers_match`), or as whole text."""
    missing = [i for i, row in enumerate(rows) if "answer" not in row]
    if missing:
        raise ValueError(f"evaluation {config.name!r}: rows {missing[:5]} have no `answer` field")
    renderer = ChatRenderer(tokenizer)
    # `render: raw` rows are asked their prompt text as it is (TRL's plain prompt-completion), with the
    # tokenizer's special tokens as SFT and RL tokenise raw prompts
    prompts = [
        row[RAW_TEXT]["prompt"] if RAW_TEXT in row else render_prompt(tokenizer, row["messages"], renderer) for row in rows
    ]
    raw = [RAW_TEXT in row for row in rows]
    completions = greedy_generate(model, tokenizer, prompts, config.max_new_tokens, config.batch_size, raw)
    correct = 0
    for row, completion in zip(rows, completions):
        gold = str(row["answer"]).strip()
        if config.match == "full_text":
            correct += completion.strip() == gold
        else:
            correct += answers_match(completion, gold, config.match)
    return {"accuracy": correct / len(rows), "n": float(len(rows))}


@register_evaluator("perplexity")
@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, rows: list[dict[str, Any]], config: EvalConfig) -> dict[str, float]:
    """exp(mean token negative log-likelihood) over held-out text.

    Documents are packed with the pre-training document separator between them (so each starts as in
    pre-training) but the separator itself is not scored, as lm-eval's rolling log-likelihood scores only a
    document's own tokens: a chat model never trained on the separator is not charged for it. (The quickstart's
    SFT model has a huge corpus perplexity either way, measured on a fresh clone, AMD EPYC: 6.48 after
    pre-training, 3.2e5 after SFT without the separator scored: SFT at lr 3e-3 forgets the corpus.)
    """
    model.eval()
    device = next(model.parameters()).device
    renderer = ChatRenderer(tokenizer)
    texts = [row if "text" in row else {"text": renderer(row["messages"])} for row in rows]
    separator = document_separator_id(tokenizer)
    packed = pack(encode_texts(tokenizer, texts, separator), config.seq_len, tokenizer.pad_token_id, split_examples=True)
    total, count = 0.0, 0
    for start in range(0, len(packed), config.batch_size):
        chunk = packed[start : start + config.batch_size]
        batch = {k: torch.tensor([r[k] for r in chunk], device=device) for k in chunk[0]}
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        labels = batch["labels"][:, 1:].masked_fill(batch["labels"][:, 1:] == separator, IGNORE_INDEX)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)), labels.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        total += float(loss)
        count += int((labels != IGNORE_INDEX).sum())
    return {"perplexity": math.exp(total / max(count, 1))}
