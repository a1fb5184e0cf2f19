"""The "reward_model" source on a tiny random-init sequence-classification model saved locally."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from posttrain.rewards import build_reward_source


def test_scores_in_batches_match_one_at_a_time(tiny_reward_model: Path) -> None:
    source = build_reward_source("reward_model", path=str(tiny_reward_model), batch_size=3)
    prompts = ["1 + 1 = ?", "2 + 2 = ?", "the answer is ?", "a b c", "yes or no ?"]
    completions = ["2", "the answer is 4", "5 5 5 5 5 5", "c", "no"]
    batched = source(prompts, completions)
    single = [source([p], [c])[0] for p, c in zip(prompts, completions)]
    assert all(result.status == "ok" for result in batched)
    assert [r.score for r in batched] == pytest.approx([r.score for r in single], abs=1e-5)
    assert len({round(r.score, 6) for r in batched}) > 1  # a random head still tells texts apart


def test_non_scalar_head_is_rejected(make_tiny_model: Callable[..., Path]) -> None:
    path = make_tiny_model("reward_model", num_labels=2)
    with pytest.raises(ValueError, match="scalar head"):
        build_reward_source("reward_model", path=str(path))


def test_module_import_does_not_import_torch() -> None:
    code = "import sys, posttrain.rewards.reward_model; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
