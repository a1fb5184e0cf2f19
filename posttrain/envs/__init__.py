"""Multi-turn environments and tools for RL stages (``environment:`` in a GRPO or PPO stage).

- `posttrain.envs.protocol`: the `Environment` protocol (``reset`` / ``step``) and `ToolEnvironment`.
- `posttrain.envs.tools`: tools as typed Python functions; schemas from transformers' `get_json_schema`.
- `posttrain.envs.tool_calls`: reading calls in the Hermes/Qwen format or the tiny model's ``<<name: arg>>``.
- `posttrain.envs.python_tool`: a Python-execution tool that runs in the code sandbox.
- `posttrain.envs.calculator`: the ``builtin:calculator`` world.
- `posttrain.envs.registry`: environments by name or ``path.py:Class``.

The multi-turn rollout that drives them (token masks, budgets, failures) is `posttrain.rl.episodes`.
Nothing here imports torch.
"""

from posttrain.envs.protocol import Environment, EpisodeError, StepResult, ToolEnvironment
from posttrain.envs.registry import available_environments, check_environment, environment_class, register_environment
from posttrain.envs.tools import ToolDefinitionError, ToolResult, call_tool, tool_schema

__all__ = [
    "Environment", "EpisodeError", "StepResult", "ToolDefinitionError", "ToolEnvironment", "ToolResult",
    "available_environments", "call_tool", "check_environment", "environment_class", "register_environment",
    "tool_schema",
]
