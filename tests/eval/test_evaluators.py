"""Evaluators: number extraction, exact-match accuracy over known completions, greedy generation and
perplexity against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

import posttrain.eval.evaluators as evaluators
from posttrain.config.common import DataSpec
from posttrain.config.evaluation import EvalConfig
from posttrain.data.world import arithmetic_rows
from posttrain.eval import evaluator
from posttrain.data.world import last_number
from posttrain.eval.evaluators import exact_match, greedy_generate, perplexity


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 1,024.", "1024"),
        ("12", "12"),
        ("3 apples and then 7", "7"),
        ("it is -5", "-5"),
        ("x = 2.50", "2.50"),
        ("12abc", "12"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


def config(**overrides) -> EvalConfig:
    values = dict(name="arith", kind="exact_match", data=DataSpec(source="builtin:arithmetic", split="test"), batch_size=2)
    values.update(overrides)
    return EvalConfig(**values)


def rows_with_answers(answers: list[str]) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": a}], "answer": a}
        for i, a in enumerate(answers)
    ]


def test_exact_match_accuracy_on_known_completions(micro, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = micro
    seen: dict = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, special_tokens=None):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return ["3", " the sum is 12 apples", "6", "1,000", "nothing"]

    monkeypatch.setattr(evaluators, "greedy_generate", fake_generate)
    rows = rows_with_answers(["3", "12", "5", "1000", "0"])
    result = exact_match(model, tokenizer, rows, config(max_new_tokens=7))
    assert result == {"accuracy": pytest.approx(3 / 5), "n": 5.0}
    # the model is asked the question, not shown the answer
    assert seen["prompts"][1] == "<|user|>question 1<|end|><|assistant|>"
    assert seen["max_new_tokens"] == 7 and seen["batch_size"] == 2
    full_text = exact_match(model, tokenizer, rows, config(match="full_text"))
    assert full_text["accuracy"] == pytest.approx(1 / 5)  # only "3" equals its answer once stripped


def test_exact_match_needs_answers(micro) -> None:
    model, tokenizer = micro
    rows = rows_with_answers(["1"])
    del rows[0]["answer"]
    with pytest.raises(ValueError, match="no `answer` field"):
        exact_match(model, tokenizer, rows, config())


def test_greedy_generate_returns_strings_and_batching_does_not_change_them(micro) -> None:
    model, tokenizer = micro
    # freshly initialised, the micro model just repeats `<|assistant|>` (decoded as ""); noise on every
    # weight makes its answers long and prompt-dependent, so a padding mistake would show
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    tokenizer.padding_side = "right"
    prompts = [
        "<|user|>What is 2 + 3?<|end|><|assistant|>",
        "<|user|>Bob has 12 pens and gets 30 more. How many now?<|end|><|assistant|>",
        "<|user|>1<|end|><|assistant|>",
    ]
    batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    assert len(batched) == 3 and all(isinstance(text, str) and text for text in batched)
    assert len(set(batched)) == 3
    assert tokenizer.padding_side == "right"  # restored
    one_by_one = [greedy_generate(model, tokenizer, [p], max_new_tokens=4, batch_size=1)[0] for p in prompts]
    assert batched == one_by_one  # left padding does not change greedy answers
    assert not model.training


def test_exact_match_runs_end_to_end_on_the_micro_model(micro) -> None:
    model, tokenizer = micro
    rows = arithmetic_rows("test", 4, 0, (1,))
    result = evaluator("exact_match")(model, tokenizer, rows, config(max_new_tokens=2, batch_size=4))
    assert result["n"] == 4.0 and 0.0 <= result["accuracy"] <= 1.0


def test_exact_match_asks_raw_prompts_with_the_tokenizers_special_tokens(micro, monkeypatch) -> None:
    """A `render: raw` row is tokenised as SFT and RL tokenise raw prompts (with bos); a chat row as its
    template renders it (no bos added), both in one left-padded batch."""
    from posttrain.data.loading import RAW_TEXT
    from tests.rl.test_prompts_and_config import bos_tokenizer

    model, _ = micro
    tokenizer = bos_tokenizer()
    asked = []

    def generate(input_ids, attention_mask, **_):
        asked.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return input_ids  # no new tokens: every answer is empty

    monkeypatch.setattr(model, "generate", generate)
    rows = [
        {"messages": [{"role": "user", "content": "2 + 3 ="}], RAW_TEXT: {"prompt": "2 + 3 ="}, "answer": "5"},
        {"messages": [{"role": "user", "content": "1 + 1 ="}], "answer": "2"},
    ]
    exact_match(model, tokenizer, rows, config(max_new_tokens=2, batch_size=2))
    assert asked[0] == [tokenizer.bos_token_id] + tokenizer("2 + 3 =", add_special_tokens=False)["input_ids"]
    chat = evaluators.render_prompt(tokenizer, rows[1]["messages"])
    assert asked[1] == tokenizer(chat, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def test_perplexity_equals_exp_mean_nll_by_hand(micro) -> None:
    model, tokenizer = micro
    text = "Bob has 3 pens and gets 4 more. Now Bob has 7 pens."
    result = perplexity(model, tokenizer, [{"text": text}], config(kind="perplexity", seq_len=64))
    # each text ends with the document separator pre-training uses (<|endoftext|>), not the chat end of turn,
    # and only the document's own tokens are scored (the separator is context, as in lm-eval's rolling scores)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-2]
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:-1]), reduction="mean")
    assert result["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


@torch.no_grad()
def test_perplexity_does_not_charge_a_model_for_the_document_separator(micro) -> None:
    """A chat model that never saw the pre-training separator may give it ~0 probability; corpus perplexity
    measures the documents' own tokens, as lm-eval's rolling log-likelihood does."""
    model, tokenizer = micro
    rows = [{"text": "Bob has 3 pens and gets 4 more."}, {"text": "Ann counts the cups."}]
    cfg = config(kind="perplexity", seq_len=64)
    before = perplexity(model, tokenizer, rows, cfg)["perplexity"]
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def push_separator_down(module, args, output):  # the separator's logit 1e4 below everything else
        output.logits[..., separator] -= 1e4

    hook = model.register_forward_hook(push_separator_down)
    try:
        after = perplexity(model, tokenizer, rows, cfg)["perplexity"]
        scored_anyway = torch.nn.functional.cross_entropy(
            model(input_ids=torch.tensor([[separator, separator]])).logits[0, :1], torch.tensor([separator])
        )
    finally:
        hook.remove()
    assert float(scored_anyway) > 1e3  # the hook works: scoring the separator would cost ~1e4 nats
    # removing the separator's probability p from every softmax raises each scored token's log-prob by
    # -log(1 - p) >= 0, so perplexity may only fall a little (p ~ 1/vocabulary on this untrained model); scored,
    # the separator alone would add ~1e4 nats per document
    assert before / 1.05 < after <= before * (1 + 1e-6)


def test_perplexity_of_the_micro_model_is_finite_and_above_one(micro) -> None:
    model, tokenizer = micro
    rows = [{"text": "The sun is warm."}, {"text": "Ann counts the cups."}] + arithmetic_rows("test", 2, 0)
    value = perplexity(model, tokenizer, rows, config(kind="perplexity", seq_len=16, batch_size=2))["perplexity"]
    assert math.isfinite(value) and value > 1
    # an untrained model is close to uniform over the vocabulary
    assert value > len(tokenizer) / 10


def test_unknown_evaluator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown evaluator 'bleu'.*exact_match.*perplexity"):
        evaluator("bleu")


def test_recipe_evaluator_kinds_are_checked_against_the_registry() -> None:
    with pytest.raises(ValueError, match="unknown evaluator 'bleu'; valid: exact_match, .*principle_violations"):
        config(kind="bleu")
    assert config(kind="principle_violations").kind == "principle_violations"


def test_exact_match_on_a_question_answer_file(micro, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An RL prompt file ({question, answer}) is an exact_match evaluation set: no dummy assistant answer."""
    import json

    from posttrain.config.common import DataSpec
    from posttrain.eval.preference import evaluation_rows

    model, tokenizer = micro
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    evaluation = config(data=DataSpec(source="qa.jsonl"), match="final_answer")
    rows = evaluation_rows(evaluation, tmp_path, seed=0)
    seen = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, special_tokens=None):
        seen["prompts"] = prompts
        return ["So it is 1.", "The answer is 3.", "The answer is 2. No, the answer is 3."]

    monkeypatch.setattr(evaluators, "greedy_generate", fake_generate)
    # golds 1, 2, 3: right (a short bare answer's number), wrong, conflicting answers (0 under final_answer)
    assert exact_match(model, tokenizer, rows, evaluation)["accuracy"] == pytest.approx(1 / 3)
    assert seen["prompts"][0] == "<|user|>What is 0 + 1?<|end|><|assistant|>"
