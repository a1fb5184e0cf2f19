"""posttrain's policy losses equal TRL's own `GRPOTrainer._compute_loss` (GRPO, BNPO, Dr. GRPO, DAPO, GSPO,
CISPO) in value and gradient on random float64 tensors: benchmarks/objectives_vs_trl.py, whose last run
(benchmarks/results/objectives_vs_trl.txt) measured a max abs difference of 5.6e-17 over 5 seeds. The bound
1e-15 allows for sums taken in another order (a few ulps of values of order 1), nothing more."""

from __future__ import annotations

import importlib.util
from pathlib import Path



def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "objectives_vs_trl.py"
    spec = importlib.util.spec_from_file_location("objectives_vs_trl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_policy_losses_match_trl_in_value_and_gradient() -> None:
    result = _benchmark().compare(seeds=3)
    assert set(result) == {"grpo", "bnpo", "dr_grpo", "dapo", "gspo", "cispo"}
    for name, (loss_diff, grad_diff, clip_fraction) in result.items():
        assert loss_diff <= 1e-15 and grad_diff <= 1e-15, name
        assert clip_fraction > 0.02, name  # clipped and unclipped tokens were both compared
