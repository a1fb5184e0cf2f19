"""Scoring preference pairs with a model, and the pairwise objectives that `train_loop` optimises.

Rows come from `posttrain.data.preferences.encode_pairs`: equal-length ``chosen_*`` and ``rejected_*``
token rows (right-padded). Both sides of a batch go through the model in one forward pass. Right padding
needs no attention mask: under causal attention no real token sees the padding after it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from posttrain.algorithms.logprobs import sequence_logprobs
from posttrain.algorithms.preference_losses import bradley_terry_loss, chosen_nll_loss, dpo_loss

Batch = dict[str, torch.Tensor]
PairScorer = Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor]]


def _both_sides(batch: Batch, key: str) -> torch.Tensor:
    return torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])


def reward_scores(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence-classification model's score of each chosen and each rejected text, (B,) each.

    The model reads the score at each row's last non-pad token (transformers finds it from
    ``config.pad_token_id``), the same place the ``reward_model`` reward source reads it.
    """
    input_ids_2BT = _both_sides(batch, "input_ids")
    scores_2B = model(input_ids=input_ids_2BT, use_cache=False).logits[:, 0].float()
    chosen_B, rejected_B = scores_2B.chunk(2)
    return chosen_B, rejected_B


def response_logprobs(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's summed log-probability of each chosen and each rejected response, (B,) each."""
    input_ids_2BT = _both_sides(batch, "input_ids")
    mask_2BT = _both_sides(batch, "response_mask")
    logits_2BTV = model(input_ids=input_ids_2BT, use_cache=False).logits
    logprobs_2B = sequence_logprobs(logits_2BTV[:, :-1], input_ids_2BT[:, 1:], mask_2BT[:, 1:])
    chosen_B, rejected_B = logprobs_2B.chunk(2)
    return chosen_B, rejected_B


def pair_count(batch: Batch) -> int:
    """Pairs in a batch: what the pairwise losses are averaged over (`train_loop`'s ``count_fn``)."""
    return int(batch["chosen_input_ids"].shape[0])


@torch.no_grad()
def score_pairs(
    scorer: PairScorer, model: Any, rows: list[dict[str, Any]], batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Runs ``scorer`` over rows in batches (model in eval mode); returns chosen and rejected values.

    ``progress(done, total)`` is called after every batch with the number of rows scored so far.
    """
    model.eval()
    device = next(model.parameters()).device
    chosen: list[float] = []
    rejected: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {key: torch.tensor([row[key] for row in chunk], device=device) for key in chunk[0]}
        chosen_B, rejected_B = scorer(model, batch)
        chosen += chosen_B.tolist()
        rejected += rejected_B.tolist()
        if progress is not None:
            progress(start + len(chunk), len(rows))
    return chosen, rejected


class PairObjective:
    """A `train_loop` loss over pair rows that also averages its per-pair metrics over each step.

    ``objective(model, batch)`` returns (summed loss over the batch's pairs, number of pairs), as
    `train_loop`'s ``loss_sum_fn``; ``objective.step_metrics()`` returns the step's mean metrics and
    starts the next step (pass it as `train_loop`'s ``step_metrics``).
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._pairs = 0

    def _record(self, metrics: dict[str, torch.Tensor], pairs: int) -> None:
        for name, value in metrics.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value) * pairs
        self._pairs += pairs

    def step_metrics(self) -> dict[str, float]:
        out = {name: total / max(self._pairs, 1) for name, total in self._sums.items()}
        self._sums, self._pairs = {}, 0
        return out


class BradleyTerryObjective(PairObjective):
    """Reward-model training: `bradley_terry_loss` on the scores, with an optional margin per pair.

    Args:
        margin_key: batch key of each pair's required reward gap, or None for no margin.
    """

    def __init__(self, margin_key: str | None = None) -> None:
        super().__init__()
        self.margin_key = margin_key

    def __call__(self, model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
        chosen_B, rejected_B = reward_scores(model, batch)
        margin_B = batch[self.margin_key].float() if self.margin_key else None
        loss, metrics = bradley_terry_loss(chosen_B, rejected_B, margin_B)
        pairs = chosen_B.shape[0]
        self._record(metrics, pairs)
        return loss * pairs, pairs


class DPOObjective(PairObjective):
    """DPO: `dpo_loss` on the policy's response log-probabilities against stored reference ones, plus
    ``nll_weight`` times `chosen_nll_loss` (DPO+NLL) when it is above 0.

    The batch must carry ``reference_chosen_logps`` and ``reference_rejected_logps`` (see
    `add_reference_logprobs`).
    """

    def __init__(self, beta: float, label_smoothing: float = 0.0, nll_weight: float = 0.0) -> None:
        super().__init__()
        self.beta, self.label_smoothing, self.nll_weight = beta, label_smoothing, nll_weight

    def __call__(self, model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
        chosen_B, rejected_B = response_logprobs(model, batch)
        loss, metrics = dpo_loss(
            chosen_B, rejected_B, batch["reference_chosen_logps"], batch["reference_rejected_logps"],
            self.beta, self.label_smoothing,
        )
        if self.nll_weight:  # DPO+NLL: the chosen tokens' mean NLL, over the tokens `response_logprobs` sums
            lengths_B = batch["chosen_response_mask"][:, 1:].sum(-1)
            nll = chosen_nll_loss(chosen_B, lengths_B)
            loss = loss + self.nll_weight * nll
            metrics["nll/chosen"] = nll.detach()
        metrics["logps/chosen"] = chosen_B.detach().mean()
        metrics["logps/rejected"] = rejected_B.detach().mean()
        pairs = chosen_B.shape[0]
        self._record(metrics, pairs)
        return loss * pairs, pairs


def add_reference_logprobs(
    model: Any, rows: list[dict[str, Any]], batch_size: int, progress: Callable[[int, int], None] | None = None
) -> None:
    """Stores the model's response log-probabilities in each row as the DPO reference, in place.

    Computed once before training, in batches of the training micro-batch size, so the reference needs no
    model of its own: for full fine-tuning it is the starting weights; for LoRA call this inside
    ``model.disable_adapter()``. ``progress`` as in `score_pairs` (a large dataset takes minutes).
    """
    chosen, rejected = score_pairs(response_logprobs, model, rows, batch_size, progress)
    for row, chosen_logp, rejected_logp in zip(rows, chosen, rejected):
        row["reference_chosen_logps"] = chosen_logp
        row["reference_rejected_logps"] = rejected_logp
