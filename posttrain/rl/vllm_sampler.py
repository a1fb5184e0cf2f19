"""Rollouts from a vLLM engine colocated in the training process (``generation.backend: vllm``).

The engine is built at the first rollout from the policy's config alone (``load_format="dummy"``: no
weights are read from disk), then given the policy's weights in memory; after every optimizer step the
engine's weights are replaced the same way before the next rollout (`VLLMSampler.weights_changed` marks
them stale; `sync_weights` copies). No checkpoint is written. Under ZeRO-3 the caller samples inside
`posttrain.distributed.gathered_parameters`, so the full weights are what is copied; a LoRA policy's
adapters are merged into the copied weights (the trained model keeps them separate). A resumed run builds
its engine from the resumed weights, since the engine is built at the first rollout after the restore.

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core and its one worker live in
this process, so weights are handed by reference to the worker's model, with the Hugging Face parameter
names, through the worker's ``reload_weights``). On a GPU the engine takes ``gpu_memory_utilization`` of
the device and, with ``sleep``, frees its key/value cache between rollouts (vLLM's sleep mode, level 1); on
a CPU its key/value cache is ``cpu_kv_cache_gib``. Each process of a multi-process launch runs its own engine over
its share of the prompts (the RL engine already splits prompts by process).

Sampling settings map one to one onto `vllm.SamplingParams`: temperature (0 = greedy), top_p, top_k,
max_tokens, the end tokens as ``stop_token_ids`` (kept in the completion, as the native sampler keeps
them), and a seed per completion derived from the same per-row stream the native sampler uses
(`posttrain.rl.sampler.RowNoise`), so a completion does not depend on which process samples it (the draws
differ from the native sampler's: vLLM has its own random number generator). Log-probs are vLLM's
``processed_logprobs``: those of the distribution it samples from, after temperature (and after top-k/top-p,
which the native sampler's exclude: with those filters on, the logged sampler/trainer gap includes them).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from posttrain.config.rl import VLLMSpec
from posttrain.rl.decoders import causal_lm_of
from posttrain.rl.sampler import Rollout, RowNoise, SamplingSettings, left_pad
from posttrain.rl.vllm_server_worker import repack_embedding_matmuls


# Engines kept alive until the process exits (see `VLLMSampler.close`).
_PARKED: list[Any] = []


def _configure_environment(spec: VLLMSpec) -> None:
    """What vLLM reads from the environment: an in-process engine (forced: the weight sync hands tensors over
    by reference, which an engine in another process could not take), the CPU key/value cache."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kv_cache_gib)  # the recipe's setting wins


@contextmanager
def merged_weights(model: Any) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The causal LM's weights under their Hugging Face names, a LoRA policy's adapters merged in, valid
    inside the ``with`` block (the tensors are the model's own, not copies).

    peft's own ``merge_adapter`` folds the adapters into the base weights and ``unmerge_adapter`` takes them
    out again on leaving, so the merge is peft's arithmetic, not ours.
    """
    merging = hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")
    if merging:
        model.merge_adapter()
    try:
        yield [
            (name.replace(".base_layer.", "."), parameter.detach())
            for name, parameter in causal_lm_of(model).named_parameters()
            if "lora_" not in name
        ]
    finally:
        if merging:
            model.unmerge_adapter()


def row_seeds(noise: RowNoise | None, generator: torch.Generator | None, rows: int) -> list[int | None]:
    """A vLLM seed per completion: from the row's place in the global batch with ``noise``, else drawn
    from ``generator``; None (the engine's own stream) with neither."""
    if noise is not None:
        return [((noise.seed * 0x9E3779B1) ^ (row * 0x85EBCA77 + 0x27D4EB2F)) & 0x7FFFFFFF for row in noise.rows]
    if generator is not None:
        return torch.randint(0, 2**31 - 1, (rows,), generator=generator, device=generator.device).tolist()
    return [None] * rows


def check_sample_arguments(prompts: Sequence[Sequence[int]], settings: SamplingSettings, noise: RowNoise | None) -> None:
    """What an engine-backed sampler refuses before it sends anything: a noise stream for other rows, no tokens."""
    if noise is not None and len(noise.rows) != len(prompts):
        raise ValueError(f"noise has {len(noise.rows)} rows for {len(prompts)} prompts")
    if settings.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {settings.max_new_tokens}")


def completions_rollout(
    prompts: Sequence[Sequence[int]], tokens: list[list[int]], logprobs: list[list[float]], eos_token_ids: Sequence[int],
    pad_token_id: int, device: torch.device,
) -> Rollout:
    """A `Rollout` from an engine's completions: per row its sampled token ids and their log-probs; a row
    is truncated unless its last token is an end token."""
    prompt_ids_BP, prompt_mask_BP = left_pad(prompts, pad_token_id, device)
    width = max(1, max(len(row) for row in tokens))
    ids_BC = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    logprobs_BC = torch.zeros((len(prompts), width), dtype=torch.float32)
    mask_BC = torch.zeros((len(prompts), width), dtype=torch.bool)
    truncated_B = torch.ones(len(prompts), dtype=torch.bool)
    ends = set(eos_token_ids)
    for row, (row_tokens, row_logprobs) in enumerate(zip(tokens, logprobs)):
        ids_BC[row, : len(row_tokens)] = torch.tensor(row_tokens, dtype=torch.long)
        mask_BC[row, : len(row_tokens)] = True
        logprobs_BC[row, : len(row_tokens)] = torch.tensor(row_logprobs, dtype=torch.float32)
        truncated_B[row] = not (row_tokens and row_tokens[-1] in ends)
    return Rollout(
        prompt_ids_BP=prompt_ids_BP, prompt_mask_BP=prompt_mask_BP, completion_ids_BC=ids_BC.to(device),
        completion_mask_BC=mask_BC.to(device), logprobs_BC=logprobs_BC.to(device), truncated_B=truncated_B.to(device),
    )


class VLLMSampler:
    """Samples completions with vLLM; the `posttrain.rl.sampler.RolloutSampler` interface plus weight sync.

    Args:
        eos_token_ids: tokens that end a completion (kept in it, as in the native sampler).
        pad_token_id: fills prompts on the left and completions on the right.
        spec: the recipe's ``generation.vllm`` settings.
        max_model_len: prompt plus completion tokens the engine must hold.
        seed: the engine's seed.
        precision: the stage's ``train.precision``; with ``spec.dtype: auto`` it picks the engine's dtype.
    """

    exact_logprobs = False  # another engine's kernels: the trainer recomputes its own

    def __init__(
        self, eos_token_ids: Sequence[int], pad_token_id: int, spec: VLLMSpec, *, max_model_len: int, seed: int = 0,
        precision: str = "auto",
    ):
        if not eos_token_ids:
            raise ValueError("the sampler needs at least one end-of-sequence token id")
        self.eos_token_ids = sorted(set(int(t) for t in eos_token_ids))
        self.pad_token_id = int(pad_token_id)
        self.spec, self.max_model_len, self.seed, self.precision = spec, max_model_len, seed, precision
        self.llm: Any = None
        self._launcher_group = False  # torch.distributed was set up by the launcher before the engine
        self.stale = True  # the engine's weights are not the policy's (none loaded yet)
        self.syncs = 0
        self._folder: tempfile.TemporaryDirectory | None = None

    def weights_changed(self) -> None:
        """The policy's weights changed (an optimizer step); the next `sample` copies them first."""
        self.stale = True

    def _dtype(self, model: Any) -> str:
        if self.spec.dtype != "auto":
            return self.spec.dtype
        on_gpu = next(model.parameters()).device.type == "cuda"
        return "bfloat16" if on_gpu and self.precision != "fp32" and torch.cuda.is_bf16_supported() else "float32"

    def _build(self, model: Any) -> None:
        """The engine for ``model``'s architecture, with placeholder weights (`sync_weights` loads the real ones)."""
        _configure_environment(self.spec)
        from vllm import LLM

        lm = causal_lm_of(model)
        self._folder = tempfile.TemporaryDirectory(prefix="posttrain-vllm-")
        lm.config.save_pretrained(self._folder.name)  # config.json only: the architecture, no weights
        on_gpu = next(model.parameters()).device.type == "cuda"
        limit = getattr(lm.config, "max_position_embeddings", None) or self.max_model_len
        arguments: dict[str, Any] = dict(
            model=self._folder.name, load_format="dummy", skip_tokenizer_init=True, dtype=self._dtype(model),
            max_model_len=min(self.max_model_len, limit), seed=self.seed, logprobs_mode="processed_logprobs",
        )
        if on_gpu:
            arguments.update(gpu_memory_utilization=self.spec.gpu_memory_utilization, enable_sleep_mode=self.spec.sleep)
        else:
            arguments.update(enforce_eager=True)  # no graph capture on CPU
        # under a multi-process launch the engine joins the launcher's process group (as its own world of
        # one data-parallel rank per process, each over its share of the prompts)
        self._launcher_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.llm = LLM(**arguments)
        self.stale = True

    @torch.no_grad()
    def sync_weights(self, model: Any) -> None:
        """Copies ``model``'s weights (adapters merged) into the engine, in memory, and forgets cached prefixes
        (their keys and values were computed with the old weights)."""
        # vLLM's in-place reload (the worker's `reload_weights`: per-layer load, then the same weight processing
        # as at start-up); the engine runs in this process, so the tensors are passed by reference
        with merged_weights(model) as weights:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.apply_model(repack_embedding_matmuls)
        self.llm.reset_prefix_cache()
        self.stale = False
        self.syncs += 1

    def _params(self, settings: SamplingSettings, seeds: list[int | None]) -> list[Any]:
        from vllm import SamplingParams

        common = dict(
            temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
            max_tokens=settings.max_new_tokens, stop_token_ids=self.eos_token_ids, ignore_eos=True, logprobs=0,
            detokenize=False,
        )
        return [SamplingParams(seed=seed, **common) for seed in seeds]

    @torch.no_grad()
    def sample(
        self, model: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
        generator: torch.Generator | None = None, noise: RowNoise | None = None,
    ) -> Rollout:
        """One completion per prompt (repeat a prompt for several), with ``model``'s current weights."""
        check_sample_arguments(prompts, settings, noise)
        if self.llm is None:
            self._build(model)
        sleeping = self.llm.llm_engine.is_sleeping() if self.llm.llm_engine.vllm_config.model_config.enable_sleep_mode else False
        if sleeping:
            self.llm.wake_up()
        if self.stale:
            self.sync_weights(model)
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts],
            self._params(settings, row_seeds(noise, generator, len(prompts))), use_tqdm=False,
        )
        if self.llm.llm_engine.vllm_config.model_config.enable_sleep_mode:
            self.llm.sleep(level=1)
        completions = [o.outputs[0] for o in outputs]
        # one {token: Logprob} per sampled token, holding the sampled one (logprobs=0)
        return completions_rollout(
            prompts, [list(c.token_ids) for c in completions],
            [[float(step[token].logprob) for step, token in zip(c.logprobs, c.token_ids)] for c in completions],
            self.eos_token_ids, self.pad_token_id, next(model.parameters()).device,
        )

    def close(self) -> None:
        """Releases the engine and its temporary config folder.

        vLLM's engine shutdown tears down torch.distributed's process groups, the default one included; under
        a multi-process launch that group is the launcher's, which the pipeline still needs (the barrier after
        the stage) and destroys itself at the end. There the engine is dropped without vLLM's shutdown (put to
        sleep first where it can sleep; the process's exit frees the rest).
        """
        if self.llm is not None and self._launcher_group:
            engine = self.llm.llm_engine
            if engine.vllm_config.model_config.enable_sleep_mode and not engine.is_sleeping():
                self.llm.sleep(level=1)
            finalizer = getattr(getattr(engine, "engine_core", None), "_finalizer", None)  # vLLM 0.32's in-process client
            if finalizer is not None:
                finalizer.detach()
            else:
                _PARKED.append(self.llm)  # no shutdown to skip: keep it until the process exits
        self.llm = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
