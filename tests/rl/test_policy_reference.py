"""The frozen reference's log-probabilities through `CachedDecoder` equal the model's own forward."""

from __future__ import annotations

import pytest
import torch

from posttrain.config.common import LoraSpec
from posttrain.models.checkpoint import apply_lora
from posttrain.rl.policy import ActorCritic, FrozenReference, ValueHead, score_completions, shared_prompt_hidden
from posttrain.rl.sampler import RolloutSampler, SamplingSettings, end_token_ids
from tests.rl.test_sampler import _perturb_norms, prompt_ids


@pytest.mark.parametrize("lora, temperature", [(False, 1.0), (False, 0.7), (True, 1.0)])
def test_reference_logprobs_equal_the_model_forward(micro, lora, temperature) -> None:
    model, tokenizer = micro
    _perturb_norms(model)
    if lora:
        model = apply_lora(model, LoraSpec(r=4, alpha=8))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.5)
    reference = FrozenReference(model, uses_lora=lora)
    # groups of a repeated prompt (prefilled once), left-padded prompts, completions ending at different steps
    prompts = [p for p in prompt_ids(tokenizer) for _ in range(3)]
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
    rollout = sampler.sample(model, prompts, SamplingSettings(12, temperature), torch.Generator().manual_seed(2))
    mask = rollout.completion_mask_BC
    assert len(set(rollout.lengths_B.tolist())) > 1
    fast = reference.logprobs(model, rollout, temperature)
    reference_model = model if lora else reference.model
    with torch.no_grad(), (model.disable_adapter() if lora else torch.no_grad()):
        slow = score_completions(ActorCritic(reference_model.eval()), rollout, temperature).logprobs_BC
    assert torch.allclose(fast[mask], slow[mask], atol=1e-4)
    assert (fast[~mask] == 0).all() and not fast.requires_grad
    if lora:  # the adapters are off for the reference: the policy's own log-probs differ
        assert not torch.allclose(fast[mask], rollout.logprobs_BC[mask], atol=1e-2)
    else:  # the reference is the starting policy: it agrees with the sampler
        assert torch.allclose(fast[mask], rollout.logprobs_BC[mask], atol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_forward_equals_the_full_forward(micro, lora) -> None:
    """GRPO's rows repeat their prompt: running each prompt once (its cache indexed out to the group) gives
    the logits, values and gradients of running every row in full."""
    model, tokenizer = micro
    _perturb_norms(model)
    if lora:
        model = apply_lora(model, LoraSpec(r=4, alpha=8))
    # three prompts of different lengths (left padding), four completions each, ending at different steps
    prompts = [p for p in prompt_ids(tokenizer) for _ in range(4)]
    sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
    rollout = sampler.sample(model, prompts, SamplingSettings(10, 1.0), torch.Generator().manual_seed(3))
    assert len(set(rollout.lengths_B.tolist())) > 1
    mask = rollout.completion_mask_BC
    torch.manual_seed(0)
    value_head = ValueHead(model.config.hidden_size)
    results = []
    for share in (True, False):
        module = ActorCritic(model, value_head, share_prompts=share).train()
        module.zero_grad()
        scores = score_completions(module, rollout, 1.0)
        loss = -(scores.logprobs_BC * mask).sum() + (scores.values_BC * mask).pow(2).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((scores, grads))
    (shared, shared_grads), (full, full_grads) = results
    assert torch.allclose(shared.logprobs_BC[mask], full.logprobs_BC[mask], atol=1e-5)
    assert torch.allclose(shared.values_BC[mask], full.values_BC[mask], atol=1e-5)
    assert shared_grads.keys() == full_grads.keys() and len(full_grads) > 2
    for name, grad in full_grads.items():
        assert torch.allclose(shared_grads[name], grad, atol=1e-4, rtol=1e-3), name
    # and the shared path really ran: the prompts repeat, so a batch of distinct prompts is its only fallback
    lm = model.get_base_model() if lora else model
    hidden = shared_prompt_hidden(
        lm, rollout.sequences_BS, rollout.attention_mask_BS, rollout.position_ids_BS, rollout.completion_ids_BC.shape[1]
    )
    assert hidden is not None and hidden.shape[:2] == rollout.completion_ids_BC.shape
    distinct = [0, 4, 8]
    assert shared_prompt_hidden(
        lm, rollout.sequences_BS[distinct], rollout.attention_mask_BS[distinct], rollout.position_ids_BS[distinct],
        rollout.completion_ids_BC.shape[1],
    ) is None
