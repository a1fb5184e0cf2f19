"""DAPO's batch shaping in the RL engine (Yu et al., arXiv 2503.14476), for `kind: grpo` stages with a
`dapo:` section: the soft overlong punishment (§3.4) added to each completion's reward, dynamic sampling
(§3.2: groups whose rewards are all equal are dropped and the batch refilled from further prompts, at most
``max_extra_rounds`` extra generation rounds per step), and overlong filtering (§3.4: truncated completions
stay in their group's statistics but out of the loss). The math is `posttrain.algorithms.dapo`.

With several processes every process samples the same number of rounds (the shortfall is summed over
processes before each round), so collectives inside generation (ZeRO-3's gathered parameters) line up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from posttrain.algorithms.dapo import informative_groups, overlong_penalty
from posttrain.rl.reward import ScoredBatch
from posttrain.rl.sampler import Rollout

SumOverProcesses = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Sampled:
    """One round's prompts (their rows), completions and scores; ``out_of_loss_B`` marks completions that
    count in their group's statistics but are not trained on."""

    rows: list[Any]
    rollout: Rollout
    scored: ScoredBatch
    out_of_loss_B: torch.Tensor

    def groups(self, index_G: list[int], group_size: int) -> "Sampled":
        """The completions of groups ``index_G``, in that order."""
        index = [g * group_size + k for g in index_G for k in range(group_size)]
        rows_B = torch.tensor(index, dtype=torch.long)
        take = lambda tensor: tensor[rows_B.to(tensor.device)]  # noqa: E731
        rollout = replace(self.rollout, **{name: take(getattr(self.rollout, name)) for name in _ROLLOUT_TENSORS})
        scored = replace(
            self.scored, rewards_B=take(self.scored.rewards_B), excluded_B=take(self.scored.excluded_B),
            results={key: [results[i] for i in index] for key, results in self.scored.results.items()},
        )
        return Sampled([self.rows[i] for i in index], rollout, scored, take(self.out_of_loss_B))


_ROLLOUT_TENSORS = ("prompt_ids_BP", "prompt_mask_BP", "completion_ids_BC", "completion_mask_BC", "logprobs_BC", "truncated_B")


def concatenate(parts: list[Sampled], pad_token_id: int) -> Sampled:
    """The parts as one batch: prompts left-padded and completions right-padded to the widest; the first
    part's reward metrics (those of the step's own prompts)."""
    prompt_width = max(part.rollout.prompt_ids_BP.shape[1] for part in parts)
    completion_width = max(part.rollout.completion_ids_BC.shape[1] for part in parts)

    def padded(tensor: torch.Tensor, width: int, value: Any, left: bool) -> torch.Tensor:
        extra = width - tensor.shape[1]
        fill = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype, device=tensor.device)
        return torch.cat([fill, tensor] if left else [tensor, fill], dim=1)

    rollouts = [part.rollout for part in parts]
    rollout = Rollout(
        prompt_ids_BP=torch.cat([padded(r.prompt_ids_BP, prompt_width, pad_token_id, True) for r in rollouts]),
        prompt_mask_BP=torch.cat([padded(r.prompt_mask_BP, prompt_width, False, True) for r in rollouts]),
        completion_ids_BC=torch.cat([padded(r.completion_ids_BC, completion_width, pad_token_id, False) for r in rollouts]),
        completion_mask_BC=torch.cat([padded(r.completion_mask_BC, completion_width, False, False) for r in rollouts]),
        logprobs_BC=torch.cat([padded(r.logprobs_BC, completion_width, 0.0, False) for r in rollouts]),
        truncated_B=torch.cat([r.truncated_B for r in rollouts]),
    )
    scored = ScoredBatch(
        rewards_B=torch.cat([part.scored.rewards_B for part in parts]),
        excluded_B=torch.cat([part.scored.excluded_B for part in parts]),
        results={key: [r for part in parts for r in part.scored.results[key]] for key in parts[0].scored.results},
        metrics=parts[0].scored.metrics,
    )
    rows = [row for part in parts for row in part.rows]
    return Sampled(rows, rollout, scored, torch.cat([part.out_of_loss_B for part in parts]))


class DAPOShaping:
    """A step's batch the DAPO way.

    Args:
        spec: the stage's `dapo:` section (`posttrain.config.grpo.DAPOSpec`).
        group_size: completions per prompt.
        max_length: ``generation.max_new_tokens`` (L_max of the overlong punishment).
        pad_token_id: pads rollouts of different widths.
        sum_over_processes: the collective that sums a tensor over processes.
    """

    def __init__(self, spec: Any, group_size: int, max_length: int, pad_token_id: int, sum_over_processes: SumOverProcesses):
        self.spec, self.group_size, self.max_length = spec, group_size, max_length
        self.pad_token_id, self.sum_over_processes = pad_token_id, sum_over_processes

    def shaped(self, sampled: Sampled) -> Sampled:
        """The round with the overlong punishment in its rewards and its truncated completions out of the loss."""
        rewards_B = sampled.scored.rewards_B
        if self.spec.overlong_buffer > 0:
            lengths_B = sampled.rollout.completion_mask_BC.sum(dim=1).to(rewards_B.device)
            rewards_B = rewards_B + overlong_penalty(
                lengths_B, self.max_length, self.spec.overlong_buffer, self.spec.overlong_penalty
            ).to(rewards_B.dtype)
        out_of_loss_B = sampled.out_of_loss_B
        if self.spec.overlong_filter:
            out_of_loss_B = out_of_loss_B | sampled.rollout.truncated_B.to(out_of_loss_B.device)
        return replace(sampled, scored=replace(sampled.scored, rewards_B=rewards_B), out_of_loss_B=out_of_loss_B)

    def batch(self, first: Sampled, sample_round: Callable[[int], Sampled]) -> tuple[Sampled, dict[str, float]]:
        """``first`` (the step's own prompts) shaped and, under dynamic sampling, with its uninformative groups
        replaced by informative ones of extra rounds (``sample_round(r)`` samples and scores round r >= 1).

        Returns the batch (as many groups as ``first``) and metrics: ``dapo/dropped_groups`` (uninformative
        groups seen), ``dapo/extra_rounds``, ``dapo/extra_completions`` (generated in extra rounds, kept or
        not), ``dapo/filler_groups`` (uninformative groups kept, out of the loss, when the cap was reached) and
        ``dapo/overlong_filtered`` (completions left out of the loss as truncated).
        """
        metrics = {"dapo/dropped_groups": 0.0, "dapo/extra_rounds": 0.0, "dapo/extra_completions": 0.0, "dapo/filler_groups": 0.0}
        batch = self.shaped(first)
        if self.spec.dynamic_sampling:
            batch = self._refilled(batch, lambda extra: self.shaped(sample_round(extra)), metrics)
        metrics["dapo/overlong_filtered"] = float((batch.out_of_loss_B & batch.rollout.truncated_B.to(batch.out_of_loss_B.device)).sum())
        return batch, metrics

    def _informative(self, sampled: Sampled) -> list[bool]:
        valid_B = ~sampled.scored.excluded_B
        return informative_groups(sampled.scored.rewards_B, valid_B, self.group_size).tolist()

    def _refilled(self, first: Sampled, sample_round: Callable[[int], Sampled], metrics: dict[str, float]) -> Sampled:
        wanted = len(first.rows) // self.group_size
        rounds = [first]
        keep = [(0, g) for g, good in enumerate(self._informative(first)) if good]
        metrics["dapo/dropped_groups"] = float(wanted - len(keep))
        extra = 0
        while extra < self.spec.max_extra_rounds:
            shortfall = torch.tensor([float(max(wanted - len(keep), 0))])
            if float(self.sum_over_processes(shortfall)[0]) == 0:  # every process has a full batch
                break
            extra += 1
            sampled = sample_round(extra)
            rounds.append(sampled)
            informative = self._informative(sampled)
            metrics["dapo/dropped_groups"] += float(informative.count(False))
            keep += [(extra, g) for g, good in enumerate(informative) if good]
        metrics["dapo/extra_rounds"] = float(extra)
        metrics["dapo/extra_completions"] = float(sum(len(r.rows) for r in rounds[1:]))
        fillers = [(0, g) for g, good in enumerate(self._informative(first)) if not good][: max(wanted - len(keep), 0)]
        metrics["dapo/filler_groups"] = float(len(fillers))
        parts = []
        for source, group in keep[:wanted] + fillers:
            part = rounds[source].groups([group], self.group_size)
            if (source, group) in fillers:  # no signal: in the batch so every process holds as many rows, not trained on
                part = replace(part, out_of_loss_B=torch.ones_like(part.out_of_loss_B))
            parts.append(part)
        return concatenate(parts, self.pad_token_id)
