"""The "environment" reward source: the reward a multi-turn environment gave the episode.

An RL stage with an `environment:` (`posttrain.rl.episodes`) puts each episode's reward in the example field
``environment_reward`` and marks an episode whose environment failed with ``episode_failed``; this source
passes the reward through, so it combines with the other entries of `reward:` (weights, gates) like any
source. A failed episode is an infrastructure error (status "error": excluded, never rewarded).

>>> source = EnvironmentReward()
>>> [(r.score, r.status) for r in source(["q", "q"], ["43", "42"], examples=[
...     {"environment_reward": 1.0, "episode_failed": False}, {"environment_reward": 0.0, "episode_failed": False}])]
[(1.0, 'ok'), (0.0, 'wrong')]
"""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source


@register_reward_source("environment")
class EnvironmentReward(RewardSource):
    """The episode's environment reward; status "ok" when it is positive, "wrong" otherwise.

    Args:
        field: Example field holding the reward (set by the multi-turn rollout).
    """

    def __init__(self, *, field: str = "environment_reward") -> None:
        self.field = field
        self.required_fields = (field,)

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        results = []
        for example in examples:
            if example.get("episode_failed"):
                results.append(RewardResult(0.0, "error", "the environment failed in this episode"))
                continue
            value = float(example[self.field])
            results.append(RewardResult(value, "ok" if value > 0 else "wrong", f"environment reward {value:g}"))
        return results
