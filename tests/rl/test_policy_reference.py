"""The frozen reference's log-probabilities through `CachedDecoder` equal the model's own forward."""

from __future__ import annotations

import pytest
import torch

from posttrain.config.common import LoraSpec
from posttrain.models.checkpoint import apply_lora
from posttrain.rl.policy import ActorCritic, FrozenReference, score_completions
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
