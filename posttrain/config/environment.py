"""Recipe section `environment:` of an RL stage (no torch): multi-turn episodes with tools.

    - name: grpo
      kind: grpo
      from: sft
      data: {source: "builtin:calculator", count: 4000}
      environment:
        name: builtin:calculator        # or my_env.py:MyEnvironment, relative to the recipe
        args: {tool_format: builtin}    # the environment class's constructor keywords
        max_turns: 3
        max_episode_tokens: 64
      reward:
        - source: environment           # the environment's own reward; other sources score the final answer

The protocol is `posttrain.envs.protocol`; the rollout that runs it is `posttrain.rl.episodes`.
`posttrain validate` loads the class, checks ``args`` against its constructor and describes every tool.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from posttrain.config.common import Strict


class EnvironmentSpec(Strict):
    """The environment an RL stage's episodes run in, and the limits of one episode."""

    name: str = Field(
        description="A built-in environment (`builtin:calculator`) or `path/to/file.py:Class` (relative to the "
        "recipe), a subclass of `posttrain.envs.Environment`."
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment's constructor.")
    max_turns: int = Field(
        4, gt=0, description="Assistant turns per episode at most; an episode still going after them is truncated."
    )
    max_episode_tokens: int = Field(
        256,
        gt=0,
        description="Tokens after the first prompt (the model's and the environment's) per episode at most; an "
        "episode that would pass it is truncated. Each turn samples at most `generation.max_new_tokens`.",
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Seconds the environment (reset, steps and tool calls) may take per episode; past "
        "them the episode is excluded from training and counted in `episodes/failed`.",
    )
