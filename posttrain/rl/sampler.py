"""Batched sampling of completions with a key/value cache: the rollout half of every RL step.

Our own loop rather than transformers' `generate`: at the sizes the project trains on a CPU, `generate`
spends most of each token in per-call overhead (logits processors, stopping criteria, cache growth, mask
building). With `CachedDecoder` the loop samples faster than `generate` on the built-in tiny model
(`benchmarks/rollout_vs_hf.py` prints the ratio; `benchmarks/results/rollout_vs_hf_cpu.txt` has the
figures), and it returns what RL needs in one pass: the token ids, each sampled token's log-probability
and the masks. The loop keeps the host out of the way: no per-token bookkeeping beyond collecting the
sampled tokens (masks are derived from the end tokens once, at the end) and one host sync per token to
stop early when every row has ended.

Log-probabilities are those of the temperature-scaled distribution ``log_softmax(logits / temperature)``
over the whole vocabulary, before top-k/top-p filtering: that is what the training-mode recomputation in
`posttrain.rl.policy.score_completions` gives, so the PPO ratio starts at 1 (top-p only narrows where samples come from).
With ``temperature == 0`` decoding is greedy and the log-probabilities are those of the plain softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from posttrain.rl.decoders import make_decoder, position_ids_for


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn.

    Attributes:
        max_new_tokens: Tokens generated at most per completion; one cut off here is `truncated`.
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p.
        top_k: Sample from the k most likely tokens only; 0 disables.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts.

    Prompts are left-padded and completions right-padded, so ``sequences_BS`` = prompt then completion is
    one tensor whose completion part starts at the same column in every row.

    Attributes:
        prompt_ids_BP: Prompt tokens, left-padded with the pad id, (B, P).
        prompt_mask_BP: True at real prompt tokens, (B, P).
        completion_ids_BC: Sampled tokens, right-padded with the pad id after the end token, (B, C).
        completion_mask_BC: True at generated tokens, the end token included, (B, C).
        logprobs_BC: Each sampled token's log-probability under the sampling policy (float32; 0 at padding).
        truncated_B: True where the completion hit ``max_new_tokens`` without an end token.
    """

    prompt_ids_BP: torch.Tensor
    prompt_mask_BP: torch.Tensor
    completion_ids_BC: torch.Tensor
    completion_mask_BC: torch.Tensor
    logprobs_BC: torch.Tensor
    truncated_B: torch.Tensor

    @property
    def sequences_BS(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids_BP, self.completion_ids_BC], dim=1)

    @property
    def attention_mask_BS(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask_BP, self.completion_mask_BC], dim=1)

    @property
    def position_ids_BS(self) -> torch.Tensor:
        return position_ids_for(self.attention_mask_BS)

    @property
    def lengths_B(self) -> torch.Tensor:
        return self.completion_mask_BC.sum(dim=1)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as a left-padded (B, P) tensor and its mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty; every prompt needs at least one token")
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return ids.to(device), mask.to(device)


def filter_logits(logits_BV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Sets logits outside the top-k and the top-p nucleus (Holtzman et al., arXiv 1904.09751 §3.1) to -inf.

    The most likely token always survives, so at least one token stays sampleable.
    """
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth_BV = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_BV, float("-inf"))
    if top_p < 1.0:
        sorted_BV, order_BV = torch.sort(logits_BV, dim=-1, descending=True)
        probs_BV = torch.softmax(sorted_BV, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted_BV = (probs_BV.cumsum(dim=-1) - probs_BV) >= top_p
        drop_BV = torch.zeros_like(drop_sorted_BV).scatter(-1, order_BV, drop_sorted_BV)
        logits_BV = logits_BV.masked_fill(drop_BV, float("-inf"))
    return logits_BV


@dataclass(frozen=True)
class RowNoise:
    """Random numbers per completion rather than per batch: row ``i`` of a batch draws from a stream keyed
    by ``(seed, rows[i], token position)``, so a completion is the same whichever batch or process samples
    it (2 processes sampling half a batch each give the completions 1 process gives for the whole batch).

    Attributes:
        seed: the stream's seed (e.g. per run and step).
        rows: each row's index in the global batch.
    """

    seed: int
    rows: Sequence[int]

    def uniform(self, position: int, vocab: int, device: torch.device) -> torch.Tensor:
        """Uniform numbers in (0, 1), (B, vocab): a hash of (seed, row, position, token id)."""
        rows_B = torch.tensor(list(self.rows), dtype=torch.int64, device=device)
        key_B = _mix32((rows_B * 0x9E3779B1 + position * 0x85EBCA77 + (self.seed & _MASK32)) & _MASK32)
        vocab_V = torch.arange(vocab, dtype=torch.int64, device=device)
        bits_BV = _mix32(_mix32((key_B[:, None] + vocab_V[None, :] * 0x27D4EB2F) & _MASK32) ^ key_B[:, None])
        # (2**24 - 1 + 0.5) / 2**24 rounds up to exactly 1.0 in float32, where -log(U) = -0.0 and a filtered
        # token's 0 / -0.0 = NaN wins the argmax; the largest float32 below 1 keeps every draw in (0, 1)
        return (((bits_BV >> 8).float() + 0.5) / float(1 << 24)).clamp_(max=_BELOW_ONE)


_MASK32 = 0xFFFFFFFF
_BELOW_ONE = 1.0 - 2.0**-24


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values (products wrap; the low 32
    bits, which are kept, are exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def sample_tokens(
    logits_BV: torch.Tensor,
    settings: SamplingSettings,
    generator: torch.Generator | None,
    noise: RowNoise | None = None,
    position: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws one token per row; returns ``(tokens_B, logprobs_B)`` (see the module docstring for which
    distribution the log-probabilities are of). With ``noise`` the draws of token ``position`` come from
    per-row streams (`RowNoise`) instead of ``generator``."""
    logits_BV = logits_BV.float()
    if settings.temperature == 0:
        logprobs_BV = torch.log_softmax(logits_BV, dim=-1)
        tokens_B = logprobs_BV.argmax(dim=-1)
    else:
        scaled_BV = logits_BV / settings.temperature if settings.temperature != 1 else logits_BV
        logprobs_BV = torch.log_softmax(scaled_BV, dim=-1)
        filtered = settings.top_k > 0 or settings.top_p < 1.0
        probs_BV = torch.softmax(filter_logits(scaled_BV, settings.top_k, settings.top_p), dim=-1) if filtered else logprobs_BV.exp()
        # exponential race (equivalent to Gumbel-max): argmax p / E with E = -log U ~ Exp(1) draws from p;
        # drawing U and taking its log is several times faster on a CPU than `exponential_`
        if noise is not None:
            uniform_BV = noise.uniform(position, probs_BV.shape[-1], probs_BV.device)
        else:
            uniform_BV = torch.rand(probs_BV.shape, generator=generator, device=probs_BV.device)
        tokens_B = (probs_BV / -torch.log(uniform_BV)).argmax(dim=-1)
    return tokens_B, logprobs_BV.gather(-1, tokens_B[:, None]).squeeze(-1)


class RolloutSampler:
    """Samples completions from a causal LM in batches, stopping each row at an end token.

    Args:
        eos_token_ids: Tokens that end a completion (kept in the completion and its mask).
        pad_token_id: Fills prompts on the left and finished completions on the right.
        backend: ``"auto"`` (our cached decoder where the architecture allows, else transformers' forward),
            ``"cached"`` or ``"transformers"``.
    """

    def __init__(self, eos_token_ids: Sequence[int], pad_token_id: int, backend: str = "auto"):
        if not eos_token_ids:
            raise ValueError("the sampler needs at least one end-of-sequence token id")
        self.eos_token_ids = sorted(set(int(t) for t in eos_token_ids))
        self.pad_token_id = int(pad_token_id)
        self.backend = backend

    @torch.no_grad()
    def sample(
        self,
        model: Any,
        prompts: Sequence[Sequence[int]],
        settings: SamplingSettings,
        generator: torch.Generator | None = None,
        noise: RowNoise | None = None,
    ) -> Rollout:
        """Samples one completion per prompt (repeat a prompt in ``prompts`` for several).

        The model is put in eval mode for sampling and returned to the mode it was in. ``noise`` (one row
        per prompt) replaces ``generator`` with per-row random streams.
        """
        if noise is not None and len(noise.rows) != len(prompts):
            raise ValueError(f"noise has {len(noise.rows)} rows for {len(prompts)} prompts")
        if settings.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {settings.max_new_tokens}")
        was_training = model.training
        model.eval()
        try:
            return self._sample(model, prompts, settings, generator, noise)
        finally:
            model.train(was_training)

    def _sample(
        self, model: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings, generator, noise: RowNoise | None
    ) -> Rollout:
        device = next(model.parameters()).device
        prompt_ids_BP, prompt_mask_BP = left_pad(prompts, self.pad_token_id, device)
        # inference mode skips autograd's bookkeeping on every op; the results are cloned out of it so the
        # training step can use them like any other tensor
        with torch.inference_mode():
            tokens_BC, logprobs_BC = self._decode(model, prompt_ids_BP, prompt_mask_BP, settings, generator, noise)
            is_end_BC = torch.isin(tokens_BC, torch.tensor(self.eos_token_ids, device=device))
            # a token belongs to the completion when no end token came before it (the end token does)
            mask_BC = (is_end_BC.cumsum(dim=1) - is_end_BC.long()) == 0
            tokens_BC = torch.where(mask_BC, tokens_BC, self.pad_token_id)
            logprobs_BC = torch.where(mask_BC, logprobs_BC, 0.0)
            truncated_B = ~is_end_BC.any(dim=1)
        return Rollout(
            prompt_ids_BP=prompt_ids_BP,
            prompt_mask_BP=prompt_mask_BP,
            completion_ids_BC=tokens_BC.clone(),
            completion_mask_BC=mask_BC.clone(),
            logprobs_BC=logprobs_BC.clone(),
            truncated_B=truncated_B.clone(),
        )

    def _decode(
        self,
        model: Any,
        prompt_ids_BP: torch.Tensor,
        prompt_mask_BP: torch.Tensor,
        settings: SamplingSettings,
        generator,
        noise: RowNoise | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw sampled tokens and their log-probabilities, (B, C): C is ``max_new_tokens`` or, when every row
        has produced an end token sooner, the step at which the last one did. Tokens after a row's end token
        are left as sampled (the caller masks them)."""
        batch, budget = prompt_ids_BP.shape[0], settings.max_new_tokens
        decoder = make_decoder(model, batch, prompt_ids_BP.shape[1] + budget, self.backend)
        eos_E = torch.tensor(self.eos_token_ids, device=prompt_ids_BP.device)
        finished_B = torch.zeros(batch, dtype=torch.bool, device=prompt_ids_BP.device)
        tokens, logprobs = [], []
        logits_BV = decoder.prefill(prompt_ids_BP, prompt_mask_BP)
        for t in range(budget):
            token_B, logprob_B = sample_tokens(logits_BV, settings, generator, noise, t)
            tokens.append(token_B)
            logprobs.append(logprob_B)
            finished_B |= torch.isin(token_B, eos_E)
            # one host sync per token; it lets a batch that has finished stop early
            if t + 1 == budget or bool(finished_B.all()):
                break
            logits_BV = decoder.step(token_B)
        return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a completion: the model's generation config's (else the tokenizer's EOS) and the
    chat template's end-of-turn token (`posttrain.models.special_tokens`), which an SFT-ed model stops at."""
    from posttrain.models.special_tokens import stop_token_ids

    return stop_token_ids(model, tokenizer)


def decode_completions(tokenizer: Any, completion_ids_BC: torch.Tensor, completion_mask_BC: torch.Tensor) -> list[str]:
    """Completion texts without special tokens (the end token and padding)."""
    lengths = completion_mask_BC.sum(dim=1).tolist()
    rows = [ids[:length] for ids, length in zip(completion_ids_BC.tolist(), lengths)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
