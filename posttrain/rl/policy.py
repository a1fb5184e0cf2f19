"""The trained module of an RL stage (the policy, plus a value head for PPO) and the frozen reference.

`ActorCritic` is what the optimizer and Accelerate see: one `nn.Module` whose forward runs the policy's
backbone once and returns, for the completion positions only, the logits and (with a value head) the
value estimates. Running the LM head on the completion positions alone skips the prompt's share of the
largest matrix product. Rows that repeat a prompt (a GRPO group) run it once and share its keys and
values (`shared_prompt_hidden`): with a short completion after a longer prompt that is most of an update's
work (the speed-up on the quickstart's GRPO batch is in `benchmarks/results/grpo_vs_trl_cpu.txt`).

The reference is the starting policy, frozen: a deep copy, or, when the policy trains LoRA adapters, the
same model with its adapters disabled (no second copy in memory).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from posttrain.algorithms.logprobs import entropy_from_logits, token_logprobs
from posttrain.rl.decoders import causal_lm_of, completion_logits, distinct_prompts, new_cache, supports_cached_decoder


class ValueHead(torch.nn.Module):
    """A scalar value estimate V(s_t) from the backbone's last hidden state at each position.

    Initialised with small weights and zero bias, so early value estimates are near 0 and the first
    advantages are close to the plain returns.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.score.weight, std=1.0 / (hidden_size + 1))
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden_BTH: torch.Tensor) -> torch.Tensor:
        return self.score(hidden_BTH.to(self.score.weight.dtype)).squeeze(-1).float()


class ActorCritic(torch.nn.Module):
    """The policy (a causal LM, possibly with LoRA adapters) and an optional value head.

    Args:
        policy: the causal LM being trained.
        value_head: a `ValueHead`, or None (GRPO).
        share_prompts: run each distinct prompt of a batch once (`shared_prompt_hidden`); False runs every
            row in full.
    """

    def __init__(self, policy: Any, value_head: ValueHead | None = None, share_prompts: bool = True):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.share_prompts = share_prompts

    def forward(
        self, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor, position_ids_BS: torch.Tensor, completion_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits predicting each completion token, (B, C, V), and values at the same positions, (B, C) or None.

        Position ``P - 1 + t`` (P = prompt width) predicts completion token ``t``; the value there estimates
        the return from emitting token ``t`` onwards. Rows that share a prompt (GRPO's groups) run it once:
        see `shared_prompt_hidden`.
        """
        lm = causal_lm_of(self.policy)
        hidden_BCH = None
        if self.share_prompts:
            hidden_BCH = shared_prompt_hidden(lm, input_ids_BS, attention_mask_BS, position_ids_BS, completion_length)
        if hidden_BCH is None:
            hidden_BSH = lm.base_model(
                input_ids=input_ids_BS, attention_mask=attention_mask_BS.long(), position_ids=position_ids_BS, use_cache=False
            ).last_hidden_state
            start = input_ids_BS.shape[1] - completion_length - 1
            hidden_BCH = hidden_BSH[:, start:-1]
        logits_BCV = lm.get_output_embeddings()(hidden_BCH)
        values_BC = self.value_head(hidden_BCH) if self.value_head is not None else None
        return logits_BCV, values_BC


def shared_prompt_hidden(
    lm: Any, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor, position_ids_BS: torch.Tensor, completion_length: int
) -> torch.Tensor | None:
    """The backbone's hidden states at the C positions that predict the completion tokens, (B, C, H), with
    each distinct prompt run once; None when no prompt repeats (or the model cannot keep a cache).

    A causal model's states over the prompt do not depend on what follows it, so the G completions of a
    prompt can attend to one copy of its keys and values: the distinct prompts are run with a key/value
    cache, the cache rows are indexed out to every completion (an indexing op, so gradients from all G
    completions flow back into the one prompt pass), and the completions run after it. This computes
    what the full forward computes (`tests/rl/test_policy_reference.py` compares logits and gradients)
    and, with short completions after a long prompt, most of the update's matrix work is the prompt's.
    """
    prompt_width = input_ids_BS.shape[1] - completion_length
    flag = "is_activation_checkpointing" if hasattr(type(lm), "is_activation_checkpointing") else "is_gradient_checkpointing"
    checkpointing = getattr(lm, flag, False)
    if completion_length == 0 or prompt_width == 0 or checkpointing:
        return None  # (activation checkpointing recomputes layers without a cache)
    first_U, rows_B = distinct_prompts(input_ids_BS[:, :prompt_width], attention_mask_BS[:, :prompt_width])
    if first_U.shape[0] == input_ids_BS.shape[0]:
        return None
    backbone = lm.base_model
    cache, cache_argument = new_cache(backbone)
    prompt = backbone(
        input_ids=input_ids_BS[first_U, :prompt_width],
        attention_mask=attention_mask_BS[first_U, :prompt_width].long(),
        position_ids=position_ids_BS[first_U, :prompt_width],
        use_cache=True,
        **{cache_argument: cache},
    )
    last_prompt_B1H = prompt.last_hidden_state[rows_B, -1:]
    if completion_length == 1:
        return last_prompt_B1H
    cache.batch_select_indices(rows_B)
    # the last completion token predicts nothing: only C - 1 completion positions need running
    completion = backbone(
        input_ids=input_ids_BS[:, prompt_width:-1],
        attention_mask=attention_mask_BS[:, :-1].long(),
        position_ids=position_ids_BS[:, prompt_width:-1],
        use_cache=True,
        **{cache_argument: cache},
    )
    return torch.cat([last_prompt_B1H, completion.last_hidden_state], dim=1)


@dataclass
class CompletionScores:
    """What a forward pass says about sampled completions.

    Attributes:
        logprobs_BC: log-probability of each completion token (at the sampling temperature); 0 at padding.
        entropy_BC: entropy of each next-token distribution (no gradient), or None.
        values_BC: value estimates, or None.
    """

    logprobs_BC: torch.Tensor
    entropy_BC: torch.Tensor | None
    values_BC: torch.Tensor | None


class CompletionBatch(Protocol):
    """Prompt + completion rows: what `score_completions` reads (a `Rollout` or an `Experience`)."""

    @property
    def sequences_BS(self) -> torch.Tensor: ...
    @property
    def attention_mask_BS(self) -> torch.Tensor: ...
    @property
    def position_ids_BS(self) -> torch.Tensor: ...
    @property
    def completion_ids_BC(self) -> torch.Tensor: ...
    @property
    def completion_mask_BC(self) -> torch.Tensor: ...


def sampled_mask(batch: Any) -> torch.Tensor:
    """The completion tokens the policy sampled, (B, C): its actions. A multi-turn rollout
    (`posttrain.rl.episodes`) also holds environment tokens, which are attended to but are not actions; a
    batch without ``sampled_mask_BC`` (a single-turn rollout) is all the policy's."""
    mask_BC = getattr(batch, "sampled_mask_BC", None)
    return batch.completion_mask_BC if mask_BC is None else mask_BC


def score_completions(module: Any, batch: CompletionBatch, temperature: float, with_entropy: bool = False) -> CompletionScores:
    """Runs ``module`` (an `ActorCritic`, possibly wrapped by Accelerate/DDP) over prompt + completion.

    Log-probabilities are those of the tokens the policy sampled (`sampled_mask`), 0 elsewhere.

    Log-probabilities are of ``softmax(logits / temperature)`` (temperature 0 counts as 1), the
    distribution the sampler reports (see `posttrain.rl.sampler`).
    """
    completion_ids_BC = batch.completion_ids_BC
    logits_BCV, values_BC = module(batch.sequences_BS, batch.attention_mask_BS, batch.position_ids_BS, completion_ids_BC.shape[1])
    if temperature not in (0, 1):
        logits_BCV = logits_BCV / temperature
    logprobs_BC = token_logprobs(logits_BCV, completion_ids_BC, sampled_mask(batch))
    if values_BC is not None and getattr(batch, "sampled_mask_BC", None) is not None:
        values_BC = torch.where(batch.sampled_mask_BC, values_BC, torch.zeros_like(values_BC))  # no value at env tokens
    entropy_BC = None
    if with_entropy:
        with torch.no_grad():
            entropy_BC = entropy_from_logits(logits_BCV.detach())
    return CompletionScores(logprobs_BC, entropy_BC, values_BC)


class FrozenReference:
    """The starting policy, frozen, for the KL penalty.

    Its log-probabilities need no gradient, so for Llama-shaped models they come from `CachedDecoder`
    (`completion_logits`): fused matrices, each distinct prompt of a GRPO group run once, inference mode.
    That is the same function as the model's forward (`tests/rl/test_policy_reference.py` checks it); it
    matters because the KL to the reference is computed every step, even when its coefficient is 0.

    Args:
        policy: the policy at the start of the stage.
        uses_lora: the policy is a peft model; the reference is then the same model with adapters disabled.
    """

    def __init__(self, policy: Any, uses_lora: bool):
        self.uses_lora = uses_lora
        self.model: Any = None
        if not uses_lora:
            self.model = copy.deepcopy(policy).eval()
            self.model.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, policy: Any, batch: CompletionBatch, temperature: float) -> torch.Tensor:
        """Reference log-probabilities of the completion tokens, (B, C). ``policy`` is the (unwrapped)
        trained policy, used with adapters disabled when the reference is its LoRA base."""
        model = policy if self.uses_lora else self.model
        adapters_off = policy.disable_adapter() if self.uses_lora else nullcontext()
        was_training = model.training
        model.eval()
        try:
            with adapters_off:
                if not supports_cached_decoder(model):
                    return score_completions(ActorCritic(model), batch, temperature).logprobs_BC
                with torch.inference_mode():
                    logprobs_BC = self._decoder_logprobs(model, batch, temperature)
                return logprobs_BC.clone()
        finally:
            model.train(was_training)

    @staticmethod
    def _decoder_logprobs(model: Any, batch: CompletionBatch, temperature: float) -> torch.Tensor:
        completion_ids_BC = batch.completion_ids_BC
        prompt_width = batch.sequences_BS.shape[1] - completion_ids_BC.shape[1]
        logits_BCV = completion_logits(
            model, batch.sequences_BS[:, :prompt_width], batch.attention_mask_BS[:, :prompt_width], completion_ids_BC
        )
        if temperature not in (0, 1):
            logits_BCV = logits_BCV / temperature
        return token_logprobs(logits_BCV, completion_ids_BC, sampled_mask(batch))
