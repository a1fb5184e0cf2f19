"""The rollout sampler: its log-probabilities are the training forward's, it stops at EOS and at
max_new_tokens, both decoders agree, and it samples from the distribution it reports."""

from __future__ import annotations

import pytest
import torch

from posttrain.config.common import LoraSpec
from posttrain.models.checkpoint import apply_lora
from posttrain.rl.decoders import supports_cached_decoder
from posttrain.rl.policy import ActorCritic, score_completions
from posttrain.rl.sampler import (
    RolloutSampler,
    RowNoise,
    SamplingSettings,
    decode_completions,
    end_token_ids,
    filter_logits,
    sample_tokens,
)

QUESTIONS = ["What is 3 + 4?", "Ann has 2 cups and gets 5 more. How many now?", "What is 17 + 5?", "What is 9 + 0?"]


def prompt_ids(tokenizer) -> list[list[int]]:
    """Chat prompts of different lengths (so the batch is left-padded)."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert len({len(i) for i in ids}) > 1
    return ids


def training_logprobs(model, rollout, temperature: float) -> torch.Tensor:
    """The sampled tokens' log-probabilities from a training-mode forward over prompt + completion."""
    model.train()
    with torch.no_grad():
        return score_completions(ActorCritic(model), rollout, temperature).logprobs_BC


@pytest.mark.parametrize("backend", ["cached", "transformers"])
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampler_logprobs_match_training_forward(micro, backend, temperature, top_p) -> None:
    model, tokenizer = micro
    model.train()
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, backend)
    settings = SamplingSettings(max_new_tokens=12, temperature=temperature, top_p=top_p)
    rollout = sampler.sample(model, prompt_ids(tokenizer) * 2, settings, torch.Generator().manual_seed(0))
    assert model.training  # the sampler samples in eval mode and puts the model back in the mode it found
    mask = rollout.completion_mask_BC
    assert mask.sum() > 20
    recomputed = training_logprobs(model, rollout, temperature)
    assert torch.allclose(recomputed[mask], rollout.logprobs_BC[mask], atol=1e-4)
    assert (rollout.logprobs_BC[~mask] == 0).all()


def test_sampler_logprobs_match_with_lora(micro) -> None:
    model, tokenizer = micro
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8))
    # move the adapters off zero so they change the output
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    assert supports_cached_decoder(peft_model)
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, "cached")
    rollout = sampler.sample(peft_model, prompt_ids(tokenizer), SamplingSettings(8), torch.Generator().manual_seed(1))
    mask = rollout.completion_mask_BC
    assert torch.allclose(training_logprobs(peft_model, rollout, 1.0)[mask], rollout.logprobs_BC[mask], atol=1e-4)
    with peft_model.disable_adapter():
        base = training_logprobs(peft_model, rollout, 1.0)
    assert not torch.allclose(base[mask], rollout.logprobs_BC[mask], atol=1e-2)


def test_cached_and_transformers_decoders_agree_greedily(micro) -> None:
    model, tokenizer = micro
    prompts = prompt_ids(tokenizer)
    settings = SamplingSettings(max_new_tokens=10, temperature=0.0)
    outputs = [
        RolloutSampler([10**6], tokenizer.pad_token_id, backend).sample(model, prompts, settings)
        for backend in ("cached", "transformers")
    ]
    assert torch.equal(outputs[0].completion_ids_BC, outputs[1].completion_ids_BC)
    assert torch.allclose(outputs[0].logprobs_BC, outputs[1].logprobs_BC, atol=1e-5)


def test_sampler_stops_at_eos_and_respects_max_new_tokens(micro) -> None:
    """Sampled with per-row noise (the same draws whatever other rows do), so rows do not all repeat one
    token: greedy decoding of the random micro model repeats token 5, which made every row stop at its first
    token and the mask checks check nothing (issue 22's mutation testing)."""
    model, tokenizer = micro
    prompts = prompt_ids(tokenizer)
    settings = SamplingSettings(max_new_tokens=8)
    free = RolloutSampler([10**6], tokenizer.pad_token_id).sample(model, prompts, settings, noise=RowNoise(5, list(range(4))))
    assert free.completion_ids_BC.shape == (4, 8) and free.truncated_B.all()
    # declare the third token of row 0 and the last of row 2 end tokens: each row must stop right after the
    # first of them it samples
    stops = {int(free.completion_ids_BC[0, 2]), int(free.completion_ids_BC[2, 7])}
    stopped = RolloutSampler(sorted(stops), tokenizer.pad_token_id).sample(model, prompts, settings, noise=RowNoise(5, list(range(4))))
    lengths = []
    for row in range(4):
        tokens = free.completion_ids_BC[row].tolist()
        length = min([tokens.index(stop) + 1 for stop in stops if stop in tokens], default=8)
        lengths.append(length)
        assert stopped.completion_mask_BC[row].sum() == length
        assert stopped.completion_ids_BC[row, :length].tolist() == tokens[:length]
        assert (stopped.completion_ids_BC[row, length:] == tokenizer.pad_token_id).all()
        assert not stopped.completion_mask_BC[row, length:].any()
        assert bool(stopped.truncated_B[row]) == (not stops & set(tokens))
    assert lengths[0] == 3 and len(set(lengths)) >= 2 and max(lengths) > 1  # the rows stop at different places
    assert not stopped.truncated_B[0]
    # when every row has stopped the loop ends early: no column is all padding
    assert stopped.completion_mask_BC[:, -1].any()


def test_max_new_tokens_bounds_every_completion(micro) -> None:
    model, tokenizer = micro
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
    rollout = sampler.sample(model, prompt_ids(tokenizer), SamplingSettings(3), torch.Generator().manual_seed(0))
    assert rollout.completion_ids_BC.shape[1] <= 3
    assert (rollout.lengths_B[rollout.truncated_B] == 3).all()
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.sample(model, prompt_ids(tokenizer), SamplingSettings(0))


def test_sampling_follows_the_reported_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(40_000, 1)
    settings = SamplingSettings(max_new_tokens=1, temperature=0.5)
    tokens, logprobs = sample_tokens(logits, settings, torch.Generator().manual_seed(0))
    expected = torch.softmax(logits[0] / 0.5, dim=-1)
    observed = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(observed, expected, atol=0.01)
    assert torch.allclose(logprobs, expected.log()[tokens])


def test_top_p_and_top_k_filtering_by_hand() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: with top_p 0.8 the first two reach 0.8, the rest go
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.79)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.1)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=1.0)).tolist() == [[True, True, True, False]]
    tokens, _ = sample_tokens(logits.repeat(2000, 1), SamplingSettings(1, top_p=0.8), torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}


def test_row_noise_draws_follow_the_reported_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(40_000, 1)
    settings = SamplingSettings(max_new_tokens=1, temperature=0.5)
    tokens, _ = sample_tokens(logits, settings, None, RowNoise(seed=3, rows=range(40_000)), position=5)
    expected = torch.softmax(logits[0] / 0.5, dim=-1)
    observed = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(observed, expected, atol=0.01)
    uniform = RowNoise(seed=3, rows=range(2)).uniform(0, 50_000, torch.device("cpu"))
    assert 0 < float(uniform.min()) and float(uniform.max()) < 1
    assert abs(float(torch.corrcoef(uniform)[0, 1])) < 0.02  # rows are independent streams


def test_row_noise_samples_a_row_the_same_in_any_batch(micro) -> None:
    """What lets N processes sample what one process samples: a row's completion depends on its global
    index, not on which other rows share its batch."""
    model, tokenizer = micro
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, "cached")
    settings = SamplingSettings(max_new_tokens=10)
    prompts = prompt_ids(tokenizer) * 2
    whole = sampler.sample(model, prompts, settings, noise=RowNoise(7, range(8)))
    halves = [sampler.sample(model, prompts[rank::2], settings, noise=RowNoise(7, range(rank, 8, 2))) for rank in (0, 1)]
    for rank, half in enumerate(halves):
        texts = decode_completions(tokenizer, half.completion_ids_BC, half.completion_mask_BC)
        expected = decode_completions(tokenizer, whole.completion_ids_BC[rank::2], whole.completion_mask_BC[rank::2])
        assert texts == expected
    other_seed = sampler.sample(model, prompts, settings, noise=RowNoise(8, range(8)))
    assert not torch.equal(other_seed.completion_ids_BC, whole.completion_ids_BC)


def _perturb_norms(model) -> None:
    """RMS norm weights away from their initial ones, so folding them into the next matrix is exercised."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.5 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("lora", [False, True])
def test_fused_decoder_logits_equal_the_unfused_and_transformers_ones(micro, lora) -> None:
    from posttrain.rl.decoders import CachedDecoder, TransformersDecoder
    from posttrain.rl.sampler import left_pad

    model, tokenizer = micro
    _perturb_norms(model)
    if lora:  # adapters wrap the layers' linear modules: those stay module calls, the LM head is still fused
        model = apply_lora(model, LoraSpec(r=4, alpha=8))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.5)
    model.eval()
    ids_BP, mask_BP = left_pad(prompt_ids(tokenizer), tokenizer.pad_token_id, torch.device("cpu"))
    decoders = [CachedDecoder(model, 4, ids_BP.shape[1] + 5), CachedDecoder(model, 4, ids_BP.shape[1] + 5, fuse=False),
                TransformersDecoder(model, 4, ids_BP.shape[1] + 5)]
    assert decoders[0].head is not None and decoders[1].head is None
    assert (decoders[0].layers[0].qkv is None) == lora and (decoders[0].layers[0].gate_up is None) == lora
    logits = [decoder.prefill(ids_BP, mask_BP) for decoder in decoders]
    for step in range(5):
        for other in logits[1:]:
            assert torch.allclose(logits[0], other, atol=1e-4), step
        tokens_B = logits[0].argmax(dim=-1)
        logits = [decoder.step(tokens_B) for decoder in decoders]


def test_sampler_after_norm_folding_matches_training_forward(micro) -> None:
    model, tokenizer = micro
    _perturb_norms(model)
    settings = SamplingSettings(max_new_tokens=10, temperature=1.0)
    rollouts = [
        RolloutSampler([10**6], tokenizer.pad_token_id, backend).sample(
            model, prompt_ids(tokenizer), settings, torch.Generator().manual_seed(5)
        )
        for backend in ("cached", "transformers")
    ]
    # the same random numbers and (up to rounding) the same distribution: the same tokens
    assert torch.equal(rollouts[0].completion_ids_BC, rollouts[1].completion_ids_BC)
    assert torch.allclose(rollouts[0].logprobs_BC, rollouts[1].logprobs_BC, atol=1e-4)
    mask = rollouts[0].completion_mask_BC
    assert torch.allclose(training_logprobs(model, rollouts[0], 1.0)[mask], rollouts[0].logprobs_BC[mask], atol=1e-4)


def test_repeated_prompts_are_prefilled_once_with_the_same_result(micro, monkeypatch) -> None:
    from posttrain.rl import decoders

    model, tokenizer = micro
    _perturb_norms(model)
    prompts = [p for p in prompt_ids(tokenizer)[:3] for _ in range(4)]  # a GRPO batch: 3 prompts x 4 samples
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0)
    prefilled_rows = []
    forward = decoders.CachedDecoder._forward

    def counting(self, ids_BT, *args, **kwargs):
        prefilled_rows.append(ids_BT.shape[0])
        return forward(self, ids_BT, *args, **kwargs)

    monkeypatch.setattr(decoders.CachedDecoder, "_forward", counting)
    rollouts = [
        RolloutSampler([10**6], tokenizer.pad_token_id, backend).sample(
            model, prompts, settings, torch.Generator().manual_seed(7)
        )
        for backend in ("cached", "transformers")
    ]
    assert prefilled_rows[0] == 3 and prefilled_rows[1:] == [12] * 7
    assert torch.equal(rollouts[0].completion_ids_BC, rollouts[1].completion_ids_BC)
    assert torch.allclose(rollouts[0].logprobs_BC, rollouts[1].logprobs_BC, atol=1e-4)
    # rows of one group were sampled independently
    assert len({tuple(row) for row in rollouts[0].completion_ids_BC[:4].tolist()}) > 1


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_row_noise_never_samples_outside_top_p_and_top_k_with_a_large_vocabulary(temperature) -> None:
    """A uniform number that rounds up to exactly 1.0 makes -log(U) = -0.0 and p / -0.0 = NaN for a filtered
    token (p = 0), which argmax picks (issue 22, defect 1). At 2**-24 per number, 32,768 numbers per draw and
    12,800 draws, about 25 draws per setting went outside the support without the fix (this test failed
    there); 0 are allowed."""
    torch.manual_seed(0)
    vocab, rows, positions = 32768, 64, 200
    logits_BV = torch.randn(rows, vocab) * 3
    noise = RowNoise(seed=11, rows=list(range(rows)))
    for settings in (SamplingSettings(4, temperature=temperature, top_p=0.9), SamplingSettings(4, temperature=temperature, top_k=50)):
        support_BV = torch.isfinite(filter_logits(logits_BV / temperature, settings.top_k, settings.top_p))
        floor_B = torch.log_softmax(logits_BV / temperature, -1).masked_fill(~support_BV, float("inf")).min(-1).values
        outside = 0
        for position in range(positions):
            tokens_B, logprobs_B = sample_tokens(logits_BV, settings, None, noise, position)
            outside += int((~support_BV.gather(-1, tokens_B[:, None])).sum())
            assert bool((logprobs_B >= floor_B - 1e-5).all()), position
        assert outside == 0


def test_row_noise_uniform_is_inside_the_open_interval() -> None:
    noise = RowNoise(seed=3, rows=list(range(256)))
    for position in range(16):
        uniform_BV = noise.uniform(position, 65536, torch.device("cpu"))
        assert float(uniform_BV.max()) < 1.0 and float(uniform_BV.min()) > 0.0
