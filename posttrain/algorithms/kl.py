"""Per-token estimators of KL(policy || reference) from samples of the policy.

J. Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

# exp(20) ~ 5e8: far beyond any ratio a sane update produces, yet small enough that exp() of it cannot
# overflow float32/bfloat16 and turn the loss into inf.
MAX_LOG_RATIO: float = 20.0


def kl_estimate(
    logprobs_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor,
    kind: str = "k3",
    max_log_ratio: float = MAX_LOG_RATIO,
) -> torch.Tensor:
    """Estimates KL(p || q) per token, where p is the policy that sampled the tokens and q the reference.

    With log-ratio ``d = log p(x) - log q(x)`` and ``r = q(x) / p(x) = exp(-d)`` (Schulman 2020):
        - ``"k1"``: ``d``. Unbiased, high variance, can be negative per token.
        - ``"k2"``: ``0.5 * d**2``. Biased, low variance, always >= 0.
        - ``"k3"``: ``(r - 1) - log r``. Unbiased (because E_p[r] = 1), low variance, always >= 0;
          the estimator GRPO uses (arXiv 2402.03300 eq. 4).

    The samples must come from p: the estimators are expectations under p, so feeding tokens sampled
    from another policy (e.g. a stale one) gives a biased estimate.

    ``d`` is clamped to ``[-max_log_ratio, max_log_ratio]`` before use, for every kind, so ``exp`` cannot
    overflow; beyond the clamp the estimate is constant and its gradient is zero.

    Args:
        logprobs_BT: Log-probabilities of the sampled tokens under the policy p, shape (B, T).
        ref_logprobs_BT: Log-probabilities of the same tokens under the reference q, shape (B, T).
        kind: One of ``KL_ESTIMATORS``.
        max_log_ratio: Bound on ``|d|``.

    Returns:
        Per-token estimates, shape (B, T). Padding is not masked here; aggregate with a mask.

    Raises:
        ValueError: For an unknown ``kind``.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid kinds: {', '.join(KL_ESTIMATORS)}")
    log_ratio_BT = (logprobs_BT - ref_logprobs_BT).clamp(-max_log_ratio, max_log_ratio)
    if kind == "k1":
        return log_ratio_BT
    if kind == "k2":
        return 0.5 * log_ratio_BT.square()
    # (r - 1) - log r with log r = -d.
    return torch.expm1(-log_ratio_BT) + log_ratio_BT
