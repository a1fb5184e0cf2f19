"""Rollouts from a vLLM server the user started (``generation: {backend: vllm, vllm: {mode: server}}``).

The TRL ``vllm_mode: server`` / OpenRLHF layout: vLLM runs in its own process (on other GPUs, or other
cores), started by the user with vLLM's own OpenAI-compatible server, and the trainer talks to it over HTTP:

- **Generation**: one ``POST /v1/completions`` per completion (token-id prompt, ``logprobs: 0`` for the
  sampled token's log-prob, ``return_token_ids``, the end tokens as ``stop_token_ids``, a seed per
  completion from its row in the global batch, as the colocated engine: `posttrain.rl.vllm_sampler.row_seeds`),
  sent concurrently so the server batches them (continuous batching). One request per completion because a
  request's seed applies to all its prompts, and a GRPO group repeats its prompt.
- **Weights**, after every optimizer step, before the next rollout: the trainer's first process writes the
  full weights (ZeRO-3: gathered by the caller; LoRA: adapters merged, `merged_weights`) as one safetensors
  file under ``weights_dir`` (default ``/dev/shm``: memory, same host; for a server on another host a shared
  folder, which that host may mount at another path: ``server_weights_dir``), then ``POST /collective_rpc`` asks
  the server's workers to load it in place (`posttrain.rl.vllm_server_worker.WeightFileLoader`, vLLM's
  ``reload_weights``), and ``POST /reset_prefix_cache`` drops keys and values computed with the old weights.
  The other processes of a launch wait at a barrier, then sample their share from the same server.
  This is a file handed over through shared memory, not a collective: vLLM 0.32's weight-transfer API
  (NCCL broadcast, CUDA IPC) needs GPUs on both sides; on GPUs it would replace the file step (not built).

The server must be started so (checked when the stage starts, before the model loads; README, 'Separate
vLLM server')::

    VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server --model CHECKPOINT \\
        --host 127.0.0.1 --port 8000 --logprobs-mode processed_logprobs --generation-config vllm \\
        --worker-extension-cls posttrain.rl.vllm_server_worker.WeightFileLoader

(``vllm serve`` is the same server; the CPU wheel's ``vllm`` command fails to read its own version.)
``CHECKPOINT`` only fixes the architecture and tokenizer: the policy's weights replace its weights before the
first rollout. The HTTP client is the standard library's (no dependency for the training environment,
which needs no vLLM in this mode).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch

from posttrain.config.rl import VLLMSpec
from posttrain.errors import RecipeError
from posttrain.rl.sampler import Rollout, RowNoise, SamplingSettings
from posttrain.rl.vllm_sampler import check_sample_arguments, completions_rollout, merged_weights, row_seeds

EXTENSION = "posttrain.rl.vllm_server_worker.WeightFileLoader"
CHECK_TIMEOUT_S = 10.0  # the start-up check: a live server answers /server_info in well under a second
REQUEST_TIMEOUT_S = 3600.0  # one completion or one weight load (a large model's load from tmpfs takes seconds)
MAX_CONCURRENT_REQUESTS = 256  # completions in flight at once; the server schedules them (continuous batching)


def _call(url: str, payload: dict | None = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """GET (no payload) or POST JSON to ``url``; the decoded JSON answer (None for an empty body)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise RuntimeError(f"vLLM server: {url} answered HTTP {error.code}: {detail}") from error
    return json.loads(body) if body else None


def check_server(url: str, where: str, max_model_len: int) -> str:
    """Checks that a vLLM server at ``url`` can serve a stage's rollouts; returns its served model name.

    Raises:
        RecipeError: one line naming ``url`` and what is wrong: unreachable, not in dev mode (no
            ``/server_info``, hence no ``/collective_rpc``), started without the posttrain worker extension or
            without ``--logprobs-mode processed_logprobs``, or a context shorter than ``max_model_len``.
    """
    base = url.rstrip("/")
    start = "start it as the README's 'Separate vLLM server' shows"
    try:
        info = _call(f"{base}/server_info?config_format=json", timeout=CHECK_TIMEOUT_S)
    except RuntimeError as error:
        raise RecipeError(
            f"{where}: the vLLM server at {url} has no /server_info ({error}); it must run with "
            f"VLLM_SERVER_DEV_MODE=1 (weights are pushed through /collective_rpc): {start}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise RecipeError(f"{where}: no vLLM server answers at {url} ({reason}); {start}") from None
    config = info.get("vllm_config") or {}
    model, parallel = config.get("model_config") or {}, config.get("parallel_config") or {}
    problems = []
    if parallel.get("worker_extension_cls") != EXTENSION:
        problems.append(f"--worker-extension-cls {EXTENSION} (weights are loaded by it)")
    if model.get("logprobs_mode") != "processed_logprobs":
        problems.append("--logprobs-mode processed_logprobs (log-probs of the distribution sampled from)")
    served_len = int(model.get("max_model_len") or 0)
    if served_len < max_model_len:
        problems.append(f"--max-model-len {max_model_len} or more (it serves {served_len}: prompt + completion tokens)")
    if problems:
        raise RecipeError(f"{where}: the vLLM server at {url} must be started with " + "; ".join(problems))
    served = model.get("served_model_name") or model.get("model")
    return served[0] if isinstance(served, list) else str(served)


def _is_first_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


class VLLMServerSampler:
    """Samples completions from a vLLM server; the `posttrain.rl.sampler.RolloutSampler` interface plus
    weight pushes.

    Args:
        eos_token_ids: tokens that end a completion (kept in it, as in the native sampler).
        pad_token_id: fills prompts on the left and completions on the right.
        spec: the recipe's ``generation.vllm`` settings (``server_url``, ``weights_dir``).
        max_model_len: prompt plus completion tokens the server must hold.
        where: the recipe key, for errors.
    """

    exact_logprobs = False  # another engine's kernels: the trainer recomputes its own

    def __init__(
        self, eos_token_ids: Sequence[int], pad_token_id: int, spec: VLLMSpec, *, max_model_len: int,
        where: str = "generation.vllm.server_url",
    ):
        if not eos_token_ids:
            raise ValueError("the sampler needs at least one end-of-sequence token id")
        if spec.server_url is None:
            raise ValueError("VLLMServerSampler needs spec.server_url")
        self.eos_token_ids = sorted(set(int(t) for t in eos_token_ids))
        self.pad_token_id = int(pad_token_id)
        self.url = spec.server_url.rstrip("/")
        self.weights_dir = spec.weights_dir
        self.server_weights_dir = spec.server_weights_dir or spec.weights_dir
        self._where = where.rsplit(".", 1)[0]
        if _is_first_process() and not os.path.isdir(self.weights_dir):
            raise RecipeError(
                f"{self._where}.weights_dir: {self.weights_dir} is not a folder (the trainer writes each "
                "weight update there for the server to read)"
            )
        self.model_name = check_server(spec.server_url, where, max_model_len)
        self.stale = True  # the server's weights are not the policy's (whatever it was started with)
        self.syncs = 0
        self._folder: str | None = None

    def weights_changed(self) -> None:
        """The policy's weights changed (an optimizer step); the next `sample` pushes them first."""
        self.stale = True

    @torch.no_grad()
    def sync_weights(self, model: Any) -> None:
        """Pushes ``model``'s weights (adapters merged) to the server: the first process writes them to
        ``weights_dir`` and has the server load them; every process of a launch waits until it has."""
        if _is_first_process():
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="posttrain-weights-", dir=self.weights_dir)
            path = os.path.join(self._folder, "model.safetensors")
            from safetensors.torch import save_file

            with merged_weights(model) as weights:
                save_file({name: tensor.contiguous().cpu() for name, tensor in weights}, path)
            # the same file as the server sees it (another host may mount the shared folder elsewhere)
            seen = os.path.join(self.server_weights_dir, os.path.basename(self._folder), "model.safetensors")
            try:
                answer = self._load_on_server(path, seen)
                _call(f"{self.url}/reset_prefix_cache", {})
            finally:
                os.unlink(path)  # a tmpfs file holds memory: gone once loaded
            loaded = (answer or {}).get("results") or []
            if not loaded or any(int(count) != int(loaded[0]) for count in loaded):
                raise RuntimeError(f"vLLM server {self.url}: unexpected answer to the weight load: {answer}")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no process samples before the server has the new weights
        self.stale = False
        self.syncs += 1

    def _load_on_server(self, path: str, seen: str) -> Any:
        """Has the server's workers load the weight file ``path`` (``seen``: its path on the server); a server
        that has no such file is told apart, with the settings that fix it."""
        try:
            return _call(f"{self.url}/collective_rpc", {"method": "load_posttrain_weights", "kwargs": {"path": seen}})
        except RuntimeError as error:
            # vLLM 0.32 answers HTTP 500 "Worker failed with error 'No such file or directory: <path>'" (measured)
            hint = (
                f": the server must see {self._where}.weights_dir; on another host mount it there and set "
                f"{self._where}.server_weights_dir to its path on that host" if "No such file" in str(error) else ""
            )
            raise RuntimeError(
                f"vLLM server {self.url} could not load the weights the trainer wrote to {path} (asked to read "
                f"{seen}){hint}. The server said: {error}"
            ) from error

    def _request(self, prompt: Sequence[int], settings: SamplingSettings, seed: int | None) -> tuple[list[int], list[float]]:
        payload = {
            "model": self.model_name, "prompt": [int(t) for t in prompt], "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k,
            "stop_token_ids": self.eos_token_ids, "ignore_eos": True, "logprobs": 0, "return_token_ids": True,
            "skip_special_tokens": False, "seed": seed,
        }
        choice = _call(f"{self.url}/v1/completions", payload)["choices"][0]
        tokens = [int(t) for t in choice["token_ids"]]
        logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        if len(logprobs) != len(tokens):
            raise RuntimeError(f"vLLM server {self.url}: {len(tokens)} tokens but {len(logprobs)} log-probs")
        return tokens, logprobs

    @torch.no_grad()
    def sample(
        self, model: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
        generator: torch.Generator | None = None, noise: RowNoise | None = None,
    ) -> Rollout:
        """One completion per prompt (repeat a prompt for several), with ``model``'s current weights."""
        check_sample_arguments(prompts, settings, noise)
        if self.stale:
            self.sync_weights(model)
        seeds = row_seeds(noise, generator, len(prompts))
        with ThreadPoolExecutor(max_workers=max(1, min(len(prompts), MAX_CONCURRENT_REQUESTS))) as pool:
            answers = list(pool.map(lambda args: self._request(args[0], settings, args[1]), zip(prompts, seeds)))
        return completions_rollout(
            prompts, [tokens for tokens, _ in answers], [logprobs for _, logprobs in answers], self.eos_token_ids,
            self.pad_token_id, next(model.parameters()).device,
        )

    def close(self) -> None:
        """Removes the weight folder; the server is the user's and keeps running."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
