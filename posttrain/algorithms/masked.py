"""Reductions over the valid entries of a tensor.

Masks are boolean or 0/1 tensors of the same shape as the data. Padded entries are excluded with
``torch.where`` rather than multiplication, so NaN or inf left in padding cannot leak into the result
(``nan * 0`` is ``nan``).
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sums ``values`` where ``mask`` is set.

    Args:
        values: Any shape.
        mask: Same shape as ``values``; boolean or 0/1.
        dim: Dimension to reduce; ``None`` reduces over all entries to a 0-dim tensor.

    Returns:
        The sum, with ``dim`` removed (or 0-dim).
    """
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Averages ``values`` over entries where ``mask`` is set; 0 where there are none.

    Args:
        values: Any shape.
        mask: Same shape as ``values``; boolean or 0/1.
        dim: Dimension to reduce; ``None`` reduces over all entries to a 0-dim tensor.

    Returns:
        The mean, with ``dim`` removed (or 0-dim). A slice with no valid entry gives 0, not NaN, so an
        empty sequence in a batch cannot poison the loss.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over all entries where ``mask`` is set.

    Args:
        values: Any shape.
        mask: Same shape as ``values``; boolean or 0/1.
        unbiased: Apply Bessel's correction (divide by ``n - 1``), as ``torch.var`` does by default.

    Returns:
        A 0-dim tensor; 0 when fewer than two entries are valid (instead of NaN).
    """
    mean = masked_mean(values, mask)
    sum_squares = masked_sum((values - mean) ** 2, mask)
    count = mask.bool().sum().to(values.dtype)
    denominator = count - 1 if unbiased else count
    return sum_squares / denominator.clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalises ``values`` to zero mean and unit variance over the valid entries.

    Used on PPO advantages (as in OpenAI baselines' PPO2, and TRL/verl) so the policy-gradient scale does
    not depend on the reward scale.

    Args:
        values: Any shape, e.g. ``advantages_BT``.
        mask: Same shape as ``values``; boolean or 0/1.
        shift_mean: If False, only divide by the standard deviation and keep the mean (used for returns).
        eps: Added to the variance before the square root.

    Returns:
        Same shape as ``values``; 0 at masked entries.
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
