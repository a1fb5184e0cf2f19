"""Which engine generates an RL stage's rollouts (``generation.backend``), resolved before any model loads.

- ``native``: the project's own batched sampler (`posttrain.rl.sampler`), which reads the policy's weights
  directly: nothing to sync, and its log-probs are the trainer's up to float rounding.
- ``vllm``: a vLLM engine in the training process (`posttrain.rl.vllm_sampler`), its weights synced from
  the policy after every optimizer step. Its log-probs come from other kernels, so the trainer recomputes
  its own (the PPO ratio's denominator) and the gap between the two is logged every step; ``train.tis_cap``
  corrects the loss for it (`posttrain.algorithms.off_policy`). With ``generation.vllm.mode: server``, a
  vLLM server the user started instead (`posttrain.rl.vllm_server`), checked here before the model loads.
- ``auto``: vLLM when it is importable and supports the model's architecture, else native (a warning
  says so).

`resolve_backend` is the one decision; `make_rollout_sampler` builds what it decided. Both sampler kinds
answer ``sample(model, prompts, settings, generator=None, noise=None) -> Rollout``, ``weights_changed()``
and ``close()``; ``exact_logprobs`` says whether the sampler's log-probs may stand for the trainer's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Literal

from posttrain.config.rl import VLLM_INSTALL, GenerationSpec
from posttrain.errors import RecipeError
from posttrain.rl.sampler import RolloutSampler, end_token_ids

Backend = Literal["native", "vllm"]

logger = logging.getLogger(__name__)


def vllm_importable() -> bool:
    """Whether vLLM can be imported here (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


@functools.lru_cache(maxsize=1)
def vllm_architectures() -> frozenset[str]:
    """The model classes (``config.architectures`` names) the installed vLLM can run."""
    from vllm import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs())


def checkpoint_architectures(folder: Path | str | None) -> list[str] | None:
    """``architectures`` from a checkpoint folder's config.json; None when unknown (hub id, built-in model)."""
    if folder is None:
        return None
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    return list(json.loads(config.read_text()).get("architectures") or []) or None


def resolve_backend(
    requested: str, where: str, architectures: list[str] | None, importable: bool | None = None,
    server: tuple[str, int] | None = None,
) -> Backend:
    """``native`` or ``vllm`` for a recipe's ``generation.backend``.

    Args:
        requested: ``native``, ``vllm`` or ``auto``.
        where: the recipe key, for errors (e.g. ``stage 'grpo': generation.backend``).
        architectures: the model's ``config.architectures`` (checked against vLLM's registry), or None to skip.
        importable: whether vLLM is importable (default: look).
        server: ``(url, max_model_len)`` with ``generation.vllm.mode: server``: the server is checked instead
            (`posttrain.rl.vllm_server.check_server`); this process then needs no vLLM.

    Raises:
        RecipeError: ``vllm`` without vLLM installed (one line with the install command), for a model
            architecture vLLM does not support (named), or a server that cannot serve (its URL named).
    """
    if requested == "native":
        return "native"
    if requested not in ("vllm", "auto"):
        raise RecipeError(f"{where}: unknown backend {requested!r}; valid: native, vllm, auto")
    if server is not None:
        from posttrain.rl.vllm_server import check_server

        check_server(server[0], where.replace("generation.backend", "generation.vllm.server_url"), server[1])
        return "vllm"
    if importable is None:
        importable = vllm_importable()
    if not importable:
        if requested == "auto":
            logger.warning("%s is auto and vLLM is not installed: rollouts use the native sampler", where)
            return "native"
        raise RecipeError(f"{where} is vllm, but vLLM is not installed: {VLLM_INSTALL}")
    unsupported = [name for name in architectures or [] if name not in vllm_architectures()]
    if unsupported:
        if requested == "auto":
            logger.warning("%s is auto and vLLM cannot run %s: rollouts use the native sampler", where, ", ".join(unsupported))
            return "native"
        raise RecipeError(
            f"{where} is vllm, but vLLM does not support the model's architecture {', '.join(unsupported)}; "
            "use backend: native"
        )
    return "vllm"


class NativeSampler(RolloutSampler):
    """The project's own sampler as a rollout backend: it reads the policy's weights at every call."""

    exact_logprobs = True

    def weights_changed(self) -> None:
        """Nothing to do: the next `sample` reads the updated weights."""

    def close(self) -> None:
        """Nothing to release."""


def make_rollout_sampler(
    backend: Backend, generation: GenerationSpec, policy: Any, tokenizer: Any, *, max_model_len: int, seed: int,
    precision: str = "auto",
) -> Any:
    """The sampler ``backend`` names for ``policy``: a `NativeSampler`, or a `VLLMSampler` (built lazily, at
    its first rollout, from the policy's weights at that time, so a resumed run starts from resumed weights).

    Args:
        backend: the resolved backend (`resolve_backend`).
        generation: the stage's generation settings (``decoder`` for native, ``vllm`` for vLLM).
        policy, tokenizer: the model that samples and its tokenizer.
        max_model_len: prompt plus completion tokens the engine must hold.
        seed: the engine's seed.
        precision: the stage's ``train.precision`` (picks the engine's dtype on a GPU).
    """
    eos = end_token_ids(policy, tokenizer)
    if backend == "native":
        return NativeSampler(eos, tokenizer.pad_token_id, generation.decoder)
    if generation.vllm.mode == "server":
        from posttrain.rl.vllm_server import VLLMServerSampler

        return VLLMServerSampler(eos, tokenizer.pad_token_id, generation.vllm, max_model_len=max_model_len)
    from posttrain.rl.vllm_sampler import VLLMSampler

    return VLLMSampler(eos, tokenizer.pad_token_id, generation.vllm, max_model_len=max_model_len, seed=seed, precision=precision)
