"""Pure-math post-training algorithms: functions of tensors and numbers, importing torch only (and the
stdlib-only `posttrain.registry`, where the recipe schema finds their names without torch).

Losses return ``(loss, metrics)`` with ``metrics`` a dict of detached 0-dim tensors; advantage
estimators return tensors. Users plug in their own policy losses and advantage estimators with
``register_policy_loss`` / ``register_advantage_estimator``.
"""

from posttrain.algorithms.advantages import (
    advantage_estimator_names,
    dr_grpo_advantages,
    gae_advantages,
    get_advantage_estimator,
    group_advantages,
    register_advantage_estimator,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)
from posttrain.algorithms.aggregation import AGGREGATION_MODES, aggregate_loss
from posttrain.algorithms.kl import KL_ESTIMATORS, MAX_LOG_RATIO, kl_estimate
from posttrain.algorithms.kl_controller import AdaptiveKLController, FixedKLController
from posttrain.algorithms.logprobs import entropy_from_logits, sequence_logprobs, token_logprobs
from posttrain.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from posttrain.algorithms.policy_losses import (
    cispo_loss,
    get_policy_loss,
    gspo_loss,
    grpo_loss,
    policy_loss_names,
    ppo_clip_loss,
    register_policy_loss,
)
from posttrain.algorithms.preference_losses import bradley_terry_loss, chosen_nll_loss, dpo_loss
from posttrain.algorithms.value_loss import clipped_value_loss

__all__ = [
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "MAX_LOG_RATIO",
    "AdaptiveKLController",
    "FixedKLController",
    "advantage_estimator_names",
    "aggregate_loss",
    "bradley_terry_loss",
    "chosen_nll_loss",
    "cispo_loss",
    "clipped_value_loss",
    "dpo_loss",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "gae_advantages",
    "get_advantage_estimator",
    "get_policy_loss",
    "group_advantages",
    "gspo_loss",
    "grpo_loss",
    "kl_estimate",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss_names",
    "ppo_clip_loss",
    "register_advantage_estimator",
    "register_policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "sequence_logprobs",
    "token_logprobs",
]
