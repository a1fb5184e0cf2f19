"""posttrain's policy losses against TRL's own GRPO loss on random tensors: the value and the gradient with
respect to the policy's log-probabilities, in float64.

    python benchmarks/objectives_vs_trl.py [--seeds 5] [--batch 8] [--length 12]

TRL's `GRPOTrainer._compute_loss` (TRL 1.16) is called unchanged on a stand-in trainer: an object with the
attributes the method reads (loss_type, importance_sampling_level, beta, epsilon_low/high, one process, no
gradient accumulation, no vLLM, no entropy masking) whose `_get_per_token_logps_and_entropies` returns the
random log-probabilities, so both sides see the same numbers. The pairs compared:

| TRL (`loss_type`, `importance_sampling_level`)  | posttrain                                            |
| ------------------------------------------------ | ---------------------------------------------------- |
| grpo, token                                      | grpo_loss, seq-mean-token-mean                       |
| bnpo, token                                      | grpo_loss, token-mean                                |
| dr_grpo, token                                   | grpo_loss, seq-mean-token-sum-norm (max_length T)    |
| dapo, token (clip-higher)                        | grpo_loss, token-mean, clip_eps_high                 |
| grpo, sequence (GSPO; clip 0.04 / 0.05)          | gspo_loss, seq-mean-token-mean                       |
| cispo, token (epsilon_high 1.2)                  | cispo_loss, clip_eps 1, clip_eps_high 0.2, token-mean|

Each with the k3 KL term (beta 0.04), mixed-length right-padded rows (every row has at least one token), old
log-probabilities a little off the current ones so some ratios leave the clip range. Advantage estimators
are not compared here: TRL has no REINFORCE++ (its `scale_rewards="batch"` divides by the std of the raw
rewards, not of the centred ones), and its group statistics live inside the generation step;
tests/algorithms check ours against the paper formulas with a plain loop.

Prints the max abs difference of loss and gradient per pair and overall, and each pair's clip fraction.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import torch

from posttrain.algorithms import cispo_loss, grpo_loss, gspo_loss

BETA = 0.04
# (name, TRL loss_type, TRL importance_sampling_level, TRL epsilon, TRL epsilon_high, our loss, our keywords)
PAIRS: list[tuple[str, str, str, float, float, Any, dict[str, Any]]] = [
    ("grpo", "grpo", "token", 0.2, 0.2, grpo_loss, {"aggregation": "seq-mean-token-mean"}),
    ("bnpo", "bnpo", "token", 0.2, 0.2, grpo_loss, {"aggregation": "token-mean"}),
    ("dr_grpo", "dr_grpo", "token", 0.2, 0.2, grpo_loss, {"aggregation": "seq-mean-token-sum-norm"}),
    ("dapo", "dapo", "token", 0.2, 0.28, grpo_loss, {"aggregation": "token-mean", "clip_eps_high": 0.28}),
    # ranges wider than the paper's 3e-4 / 4e-4 so that, at these random ratios, some completions are clipped
    # and some are not
    ("gspo", "grpo", "sequence", 0.04, 0.05, gspo_loss,
     {"aggregation": "seq-mean-token-mean", "clip_eps": 0.04, "clip_eps_high": 0.05}),
    # TRL caps the weight at epsilon_high itself (its recommended 5.0 = our clip_eps_high 4.0); a cap of 1.2 here
    # so that some weights are capped at these random ratios
    ("cispo", "cispo", "token", 0.2, 1.2, cispo_loss, {"aggregation": "token-mean", "clip_eps": 1.0, "clip_eps_high": 0.2}),
]


class _OneProcess:
    """What `_compute_loss` asks of Accelerate, for one process."""

    num_processes = 1
    sync_gradients = True

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    gather_for_metrics = gather


def trl_loss(loss_type: str, level: str, epsilon: float, epsilon_high: float, tensors: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    """TRL's loss and its gradient with respect to the log-probabilities."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    logprobs_BT = tensors["logprobs_BT"].clone().requires_grad_(True)
    mask_BT = tensors["mask_BT"].to(torch.int64)
    batch, length = mask_BT.shape
    trainer = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=BETA,
        loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=_OneProcess(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, max_completion_length=length,
        _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logprobs_BT, torch.zeros_like(logprobs_BT), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.int64), "prompt_mask": torch.ones(batch, 1, dtype=torch.int64),
        "completion_ids": torch.zeros(batch, length, dtype=torch.int64), "completion_mask": mask_BT,
        "advantages": tensors["advantages_B"], "old_per_token_logps": tensors["old_logprobs_BT"],
        "ref_per_token_logps": tensors["ref_logprobs_BT"], "num_items_in_batch": mask_BT.sum().to(torch.float64),
    }
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return float(loss.detach()), logprobs_BT.grad


def our_loss(loss_function: Any, keywords: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor, float]:
    """posttrain's loss, its gradient with respect to the log-probabilities, and its clip fraction."""
    logprobs_BT = tensors["logprobs_BT"].clone().requires_grad_(True)
    loss, metrics = loss_function(
        logprobs_BT=logprobs_BT, old_logprobs_BT=tensors["old_logprobs_BT"], advantages_BT=tensors["advantages_B"],
        mask_BT=tensors["mask_BT"], ref_logprobs_BT=tensors["ref_logprobs_BT"], beta=BETA, kl_kind="k3",
        max_length=tensors["mask_BT"].shape[1], **{"clip_eps": 0.2, **keywords},
    )
    loss.backward()
    return float(loss.detach()), logprobs_BT.grad, float(metrics["clip_fraction"])


def random_tensors(seed: int, batch: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logprobs_BT = -3 * torch.rand(batch, length, generator=generator, dtype=torch.float64)
    lengths_B = torch.randint(1, length + 1, (batch,), generator=generator)
    return {
        "logprobs_BT": logprobs_BT,
        "old_logprobs_BT": logprobs_BT + 0.15 * torch.randn(batch, length, generator=generator, dtype=torch.float64),
        "ref_logprobs_BT": logprobs_BT + 0.3 * torch.randn(batch, length, generator=generator, dtype=torch.float64),
        "advantages_B": torch.randn(batch, generator=generator, dtype=torch.float64),
        "mask_BT": torch.arange(length)[None, :] < lengths_B[:, None],
    }


def compare(seeds: int = 5, batch: int = 8, length: int = 12) -> dict[str, tuple[float, float, float]]:
    """Per pair, the max abs difference (loss, gradient) over ``seeds`` random draws, and the mean clip
    fraction (so a reader sees that clipped and unclipped tokens were both compared)."""
    result: dict[str, tuple[float, float, float]] = {}
    for name, loss_type, level, epsilon, epsilon_high, loss_function, keywords in PAIRS:
        worst_loss = worst_grad = clipped = 0.0
        for seed in range(seeds):
            tensors = random_tensors(seed, batch, length)
            theirs, their_grad = trl_loss(loss_type, level, epsilon, epsilon_high, tensors)
            ours, our_grad, clip_fraction = our_loss(loss_function, keywords, tensors)
            worst_loss = max(worst_loss, abs(theirs - ours))
            worst_grad = max(worst_grad, float((their_grad - our_grad).abs().max()))
            clipped += clip_fraction / seeds
        result[name] = (worst_loss, worst_grad, clipped)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=12)
    options = parser.parse_args()
    import trl

    print(f"TRL {trl.__version__}, torch {torch.__version__}, float64, {options.seeds} seeds, B={options.batch}, T={options.length}")
    result = compare(options.seeds, options.batch, options.length)
    for name, (loss_diff, grad_diff, clipped) in result.items():
        print(f"{name:8s} max |loss diff| {loss_diff:.3g}   max |grad diff| {grad_diff:.3g}   clip fraction {clipped:.2f}")
    print(f"overall  max abs diff {max(max(pair[:2]) for pair in result.values()):.3g}")


if __name__ == "__main__":
    main()
