"""GRPO (Shao et al., arXiv 2402.03300 §4.1): several completions per prompt, group-relative advantages,
the KL to the frozen starting model in the loss. Dr. GRPO and RLOO advantages are options of the same
stage (`advantage:`); see `posttrain.config.rl.GRPOConfig`."""

from __future__ import annotations

from posttrain.config.rl import GRPOConfig
from posttrain.rl.stage import RLStage
from posttrain.stages.base import register_stage


@register_stage("grpo")
class GRPOStage(RLStage):
    """GRPO on the shared RL engine (`posttrain.rl.engine`) with `posttrain.rl.objectives.GRPOObjective`."""

    config: GRPOConfig
