"""End of turn, end of sequence and document separator, read from real tokenizer conventions: a base
tokenizer whose eos (`<|endoftext|>`) is not the token its chat template ends turns with (`<|im_end|>`)."""

from __future__ import annotations

import logging

import pytest
import torch

from posttrain.models import special_tokens
from posttrain.models.special_tokens import document_separator_id, end_of_turn_token_id, stop_token_ids
from tests.models.family_tokenizers import CONVENTIONS, family_tokenizer


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_end_of_turn_is_the_token_after_the_assistant_content(name) -> None:
    tokenizer = family_tokenizer(name)
    expected = tokenizer.convert_tokens_to_ids(CONVENTIONS[name].end_of_turn)
    assert end_of_turn_token_id(tokenizer) == expected


def test_a_template_ending_turns_with_text_has_no_end_of_turn_token() -> None:
    tokenizer = family_tokenizer("qwen_base")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    assert end_of_turn_token_id(tokenizer) is None
    tokenizer.chat_template = None
    assert end_of_turn_token_id(tokenizer) is None


class _Model(torch.nn.Module):
    def __init__(self, eos):
        super().__init__()
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(eos_token_id=eos)


def test_stop_tokens_add_the_end_of_turn_and_warn_once(caplog) -> None:
    tokenizer = family_tokenizer("qwen_base")
    eos, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    special_tokens._warned.clear()
    with caplog.at_level(logging.WARNING, logger="posttrain.models.special_tokens"):
        assert stop_token_ids(_Model(eos), tokenizer) == [eos, im_end]
        assert stop_token_ids(_Model([eos, im_end]), tokenizer) == [eos, im_end]
    warnings = [r for r in caplog.records if "<|im_end|>" in r.getMessage()]
    assert len(warnings) == 1 and "<|endoftext|>" in warnings[0].getMessage()
    # an instruct tokenizer (eos is the end of turn) stops there alone and says nothing
    instruct = family_tokenizer("qwen_instruct")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="posttrain.models.special_tokens"):
        assert stop_token_ids(_Model(None), instruct) == [im_end]
    assert not caplog.records


def test_document_separator_is_never_the_chat_end_of_turn() -> None:
    # ChatML instruct: eos = <|im_end|>, but <|endoftext|> separates documents
    instruct = family_tokenizer("qwen_instruct")
    assert document_separator_id(instruct) == instruct.convert_tokens_to_ids("<|endoftext|>")
    # Gemma: eos <eos> is not the end of turn (<end_of_turn>)
    gemma = family_tokenizer("gemma")
    assert document_separator_id(gemma) == gemma.convert_tokens_to_ids("<eos>")
    llama = family_tokenizer("llama3_base")
    assert document_separator_id(llama) == llama.convert_tokens_to_ids("<|end_of_text|>")
    assert document_separator_id(llama, "<|begin_of_text|>") == llama.convert_tokens_to_ids("<|begin_of_text|>")
    with pytest.raises(ValueError, match="not a token"):
        document_separator_id(llama, "<|no such token|>")
    # Mistral: eos </s> ends turns too, so documents are separated by bos <s>
    mistral = family_tokenizer("mistral")
    assert document_separator_id(mistral) == mistral.convert_tokens_to_ids("<s>")



def _model_that_ends_turns(tokenizer):
    """A micro Qwen2 model whose every next token is `<|im_end|>` (its output layer's bias says so), with a
    generation config naming only the tokenizer's eos `<|endoftext|>`, as a base checkpoint's does."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    head = torch.nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids("<|im_end|>")] = 10.0
    model.lm_head = head
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model


def test_sampler_and_evaluation_stop_at_the_end_of_turn() -> None:
    from posttrain.eval.evaluators import greedy_generate
    from posttrain.rl.sampler import RolloutSampler, SamplingSettings, end_token_ids

    tokenizer = family_tokenizer("qwen_base")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = _model_that_ends_turns(tokenizer)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, "transformers")
    rollout = sampler.sample(model, [prompt] * 2, SamplingSettings(max_new_tokens=8, temperature=0.0))
    # without the end-of-turn token both completions ran to max_new_tokens and counted as truncated
    assert rollout.lengths_B.tolist() == [1, 1] and not rollout.truncated_B.any()
    assert rollout.completion_ids_BC[:, 0].tolist() == [im_end, im_end]
    calls = []
    generate = model.generate
    model.generate = lambda **kw: calls.append(kw) or generate(**kw)
    assert greedy_generate(model, tokenizer, [text], max_new_tokens=8, batch_size=1) == [""]
    assert im_end in calls[0]["eos_token_id"]
