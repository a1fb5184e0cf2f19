"""PPO for language models with a KL-shaped reward (Ziegler et al., arXiv 1909.08593; Ouyang et al., arXiv
2203.02155): a value head on the policy, GAE, clipped policy and value losses, fixed or adaptive KL
coefficient; the frozen reference is the starting model. See `posttrain.config.rl.PPOConfig`.

The saved checkpoint is the policy alone (a plain causal LM); the value head is discarded.
"""

from __future__ import annotations

from posttrain.config.rl import PPOConfig
from posttrain.rl.stage import RLStage
from posttrain.stages.base import register_stage


@register_stage("ppo")
class PPOStage(RLStage):
    """PPO on the shared RL engine (`posttrain.rl.engine`) with `posttrain.rl.objectives.PPOObjective`."""

    config: PPOConfig
