"""The plug point between the RL engine and a stage kind: an objective's two hooks, and what they read.

An objective (`posttrain.stages.grpo.GRPOObjective`, `posttrain.stages.ppo.PPOObjective`, or a user's own)
has two hooks the engine calls, each a function of its arguments (any collective comes in as one):

- ``advantages(experience, kl_BC, kl_coef, sum_over_processes)``: after rollout, reward and the KL to the
  reference, the per-completion (B,) or per-token (B, C) advantages, the value targets if it learns values,
  and metrics.
- ``loss(batch, scores, kl_coef)``: on a micro-batch, the scalar to minimise and its metrics.

``uses_values`` says whether the engine adds a value head; ``state_dict`` / ``load_state_dict`` carry what
changes during training (for resumable checkpoints). The numbers are pure functions of
`posttrain.algorithms`; the advantage estimator and policy loss are chosen by name in the recipe
(`resolve_plug_in`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from posttrain.registry import Registry, is_file_function
from posttrain.rl.policy import CompletionScores

Metrics = dict[str, torch.Tensor | float]
SumOverProcesses = Callable[[torch.Tensor], torch.Tensor]


def local_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes with one process: the values themselves."""
    return values


@dataclass
class Experience:
    """One batch of rollouts with what the update needs; row i of every tensor is the same completion.

    Completions of one prompt are contiguous rows (``group_size`` of them).
    """

    sequences_BS: torch.Tensor
    attention_mask_BS: torch.Tensor
    position_ids_BS: torch.Tensor
    completion_ids_BC: torch.Tensor
    completion_mask_BC: torch.Tensor  # generated tokens (end token included), and environment tokens in episodes
    loss_mask_BC: torch.Tensor  # the tokens that are trained on: sampled tokens of non-excluded rows
    sampler_logprobs_BC: torch.Tensor
    old_logprobs_BC: torch.Tensor
    ref_logprobs_BC: torch.Tensor
    rewards_B: torch.Tensor
    excluded_B: torch.Tensor
    old_values_BC: torch.Tensor | None = None
    advantages: torch.Tensor | None = None  # (B,) for outcome advantages, (B, C) for GAE
    returns_BC: torch.Tensor | None = None
    sampled_mask_BC: torch.Tensor | None = None  # multi-turn episodes: the model's tokens (None: all of them)

    def rows(self, index_R: torch.Tensor) -> "Experience":
        """The experience of rows ``index_R`` only."""
        return replace(self, **{f.name: _take(getattr(self, f.name), index_R) for f in fields(self)})


def _take(value: Any, index_R: torch.Tensor) -> Any:
    return value[index_R] if isinstance(value, torch.Tensor) else value


@dataclass
class Advantages:
    """What an objective's ``advantages`` hook returns."""

    advantages: torch.Tensor  # (B,) outcome advantages or (B, C) token advantages
    returns_BC: torch.Tensor | None = None  # value targets, for objectives that learn values
    metrics: Metrics = field(default_factory=dict)


class Objective(Protocol):
    """What a stage kind gives the RL engine."""

    uses_values: bool

    def advantages(
        self, experience: Experience, kl_BC: torch.Tensor, kl_coef: float, sum_over_processes: SumOverProcesses
    ) -> Advantages: ...

    def loss(self, batch: Experience, scores: CompletionScores, kl_coef: float) -> tuple[torch.Tensor, Metrics]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def clip_settings(config: Any) -> dict[str, Any]:
    """The policy-loss keywords every RL stage config carries (clip ranges, token aggregation)."""
    return {
        "clip_eps": config.clip_eps,
        "clip_eps_high": config.clip_eps_high,
        "dual_clip": config.dual_clip,
        "aggregation": config.loss_aggregation,
        "max_length": config.generation.max_new_tokens,
    }


def resolve_plug_in(registry: Registry, value: str, recipe_dir: Path | None, keywords: tuple[str, ...]) -> Callable[..., Any]:
    """The function a recipe names: a registered name, or ``path/to/file.py:function`` relative to the
    recipe's folder. It must accept ``keywords`` (the calling convention of the stage that calls it).

    Raises:
        ValueError: for an unknown name, a missing file or function, or a function that does not take the
            keywords; the message names the cause.
    """
    if is_file_function(value):
        from posttrain.rewards.python_function import load_function  # the same loader `source: python` uses

        function = load_function(value, what=f"{registry.what} {value!r}", relative_to=recipe_dir)
    else:
        function = registry.get(value)
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in keywords if name not in parameters and not takes_any]
    if missing:
        raise ValueError(
            f"{registry.what} {value!r} does not take {', '.join(missing)}; this stage calls it with the keywords "
            f"{', '.join(keywords)}"
        )
    return function


def optional_keywords(function: Callable[..., Any], keywords: tuple[str, ...]) -> tuple[str, ...]:
    """The ``keywords`` that ``function`` takes by name (all of them if it takes ``**kwargs``): a stage passes
    these optional arguments only to a plug-in that asks for them."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return keywords
    return tuple(name for name in keywords if name in parameters)
