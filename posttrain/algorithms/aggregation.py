"""How a per-token loss becomes one number.

The choice matters: GRPO (arXiv 2402.03300 eq. 3) averages tokens within a sequence, then sequences,
which weights each token of a short answer more than a token of a long one; DAPO (arXiv 2503.14476 §3.3)
and Dr. GRPO (arXiv 2503.20783 §3.1) argue for token-level or constant normalisation instead.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.masked import masked_mean, masked_sum

AGGREGATION_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def aggregate_loss(
    loss_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: str = "token-mean",
    max_length: int | None = None,
) -> torch.Tensor:
    """Reduces a per-token loss to a scalar.

    Modes:
        - ``"token-mean"``: sum over all valid tokens / number of valid tokens (DAPO's token-level
          loss, arXiv 2503.14476 §3.3).
        - ``"seq-mean-token-sum"``: per-sequence sum, then mean over sequences.
        - ``"seq-mean-token-mean"``: per-sequence mean, then mean over sequences (GRPO, arXiv 2402.03300
          eq. 3).
        - ``"seq-mean-token-sum-norm"``: per-sequence sum / ``max_length``, then mean over sequences
          (Dr. GRPO, arXiv 2503.20783 §3.1, which divides by the generation budget instead of |o_i|).

    Sequence means run over sequences with at least one valid token, so an all-padding row neither adds
    to the loss nor dilutes it. With no valid token at all the loss is 0 (still connected to the graph).

    Args:
        loss_BT: Per-token loss, shape (B, T).
        mask_BT: Valid-token mask, shape (B, T); boolean or 0/1.
        mode: One of ``AGGREGATION_MODES``.
        max_length: The constant divisor for ``"seq-mean-token-sum-norm"``, normally the maximum number
            of generated tokens. Required for that mode and ignored otherwise; it is not defaulted to the
            padded length because that would make the loss depend on how the batch was padded.

    Returns:
        A 0-dim tensor.

    Raises:
        ValueError: For an unknown ``mode``, or ``"seq-mean-token-sum-norm"`` without ``max_length``.
    """
    if mode == "token-mean":
        return masked_mean(loss_BT, mask_BT)
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {', '.join(AGGREGATION_MODES)}")

    if mode == "seq-mean-token-sum":
        sequence_loss_B = masked_sum(loss_BT, mask_BT, dim=-1)
    elif mode == "seq-mean-token-mean":
        sequence_loss_B = masked_mean(loss_BT, mask_BT, dim=-1)
    else:
        if max_length is None or max_length <= 0:
            raise ValueError(f"aggregation mode {mode!r} needs a positive max_length, got {max_length!r}")
        sequence_loss_B = masked_sum(loss_BT, mask_BT, dim=-1) / max_length

    has_tokens_B = mask_BT.bool().any(dim=-1)
    return masked_mean(sequence_loss_B, has_tokens_B)
