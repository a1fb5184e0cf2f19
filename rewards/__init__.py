"""Reward sources: one interface for reward models, verifiers, judges, rules and user functions.

Public API:
- `RewardEntry`, `WeightSchedule`: recipe configuration of one reward term (pydantic; no torch).
- `RewardSource`, `RewardResult`: the typed batch interface every source implements.
- `register_reward_source`, `build_reward_source`, `available_reward_sources`: the registry of kinds.
- `CompositeReward`, `combine_rewards`: weights, gates, normalisation and schedules over several sources.
- `as_trl_reward_func`: any of the above as a TRL `reward_funcs` callable.

Importing this package imports no torch and none of the source modules; built-in kinds load on first lookup.
"""

from posttrain.rewards.base import Example, MissingFieldError, RewardResult, RewardSource
from posttrain.rewards.compose import CombinedRewards, CompositeResult, CompositeReward, combine_rewards
from posttrain.rewards.config import NormalizeMode, RewardEntry, WeightSchedule, check_reward_entries
from posttrain.rewards.registry import (
    available_reward_sources,
    build_reward_source,
    check_reward_source_args,
    register_reward_source,
)
from posttrain.rewards.trl_adapter import as_trl_reward_func

__all__ = [
    "CombinedRewards",
    "CompositeResult",
    "CompositeReward",
    "Example",
    "MissingFieldError",
    "NormalizeMode",
    "RewardEntry",
    "RewardResult",
    "RewardSource",
    "WeightSchedule",
    "as_trl_reward_func",
    "available_reward_sources",
    "build_reward_source",
    "check_reward_entries",
    "check_reward_source_args",
    "combine_rewards",
    "register_reward_source",
]
