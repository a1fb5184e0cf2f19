"""Per-token log-probabilities and entropies from logits, upcast to at least float32 one sequence at a
time.

A 32k-152k vocabulary makes (B, T, V) the largest activation in post-training; a float32
``log_softmax`` over all of it at once would add a full float32 copy. Reducing row by row keeps the
extra memory to one (T, V) block when no gradient is needed (rollout, reference and old-policy
scoring); with gradients, autograd still keeps each row's upcast copy for the backward pass.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.masked import masked_sum


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision logits; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def token_logprobs(
    logits_BTV: torch.Tensor, labels_BT: torch.Tensor, mask_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probability of each label token: ``logits[label] - logsumexp(logits)``, in at least float32.

    Alignment is the caller's job: ``logits_BTV[:, t]`` must be the prediction for ``labels_BT[:, t]``
    (for a causal LM, pass ``logits[:, :-1]`` with ``input_ids[:, 1:]``).

    Args:
        logits_BTV: Unnormalised scores, (B, T, V), any float dtype.
        labels_BT: Token ids, (B, T). At masked positions they may be anything, e.g. -100.
        mask_BT: Valid-token mask, (B, T); boolean or 0/1; None means all valid.

    Returns:
        Log-probabilities in at least float32, (B, T); 0 at masked positions.
    """
    valid_BT = torch.ones_like(labels_BT, dtype=torch.bool) if mask_BT is None else mask_BT.bool()
    # Ignore-index labels such as -100 would make gather fail; any in-range id will do as it is masked.
    safe_labels_BT = torch.where(valid_BT, labels_BT, torch.zeros_like(labels_BT))
    rows = []
    for logits_TV, labels_T in zip(logits_BTV, safe_labels_BT):
        logits_TV = logits_TV.to(_at_least_float32(logits_TV.dtype))
        label_logits_T = logits_TV.gather(-1, labels_T.unsqueeze(-1)).squeeze(-1)
        rows.append(label_logits_T - torch.logsumexp(logits_TV, dim=-1))
    logprobs_BT = torch.stack(rows)
    return torch.where(valid_BT, logprobs_BT, torch.zeros_like(logprobs_BT))


def sequence_logprobs(
    logits_BTV: torch.Tensor, labels_BT: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Log-probability of each whole labelled sequence: the sum of ``token_logprobs`` over valid tokens.

    This is the ``log pi(y|x)`` that ``dpo_loss`` takes.

    Args:
        logits_BTV: Unnormalised scores, (B, T, V), aligned with ``labels_BT`` (see ``token_logprobs``).
        labels_BT: Token ids, (B, T).
        mask_BT: Which tokens belong to the completion, (B, T); boolean or 0/1.

    Returns:
        Log-probabilities in at least float32, (B,).
    """
    return masked_sum(token_logprobs(logits_BTV, labels_BT, mask_BT), mask_BT, dim=-1)


def entropy_from_logits(logits_BTV: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, in nats, computed in at least float32.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``, which avoids ``log 0`` for tokens with vanishing
    probability; tokens with logit -inf are allowed.

    Args:
        logits_BTV: Unnormalised scores, (B, T, V).

    Returns:
        Entropies, (B, T).
    """
    rows = []
    for logits_TV in logits_BTV:
        logits_TV = logits_TV.to(_at_least_float32(logits_TV.dtype))
        probs_TV = torch.softmax(logits_TV, dim=-1)
        # Banned tokens carry -inf logits and 0 probability; 0 * -inf would be NaN.
        finite_logits_TV = logits_TV.masked_fill(probs_TV == 0, 0.0)
        rows.append(torch.logsumexp(logits_TV, dim=-1) - (probs_TV * finite_logits_TV).sum(dim=-1))
    return torch.stack(rows)
