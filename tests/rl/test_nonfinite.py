"""`train.on_nan` in the RL stages: a NaN advantage or loss skips just that update, counted and visible in
the logs; with `stop` the error names the step, its prompts and the last good training state."""

from __future__ import annotations

import pytest
import torch

from posttrain.errors import NonFiniteLossError
from posttrain.training.state import TrainCheckpoints
from tests.rl.conftest import rl_config
from tests.rl.test_engine import changed, parameters  # noqa: F401  (also registers test_not_a_number)


def test_nan_rewards_skip_every_update_and_say_so(make_stage) -> None:
    stage = make_stage(rl_config("grpo", reward=[{"source": "test_not_a_number"}], train={"steps": 2, "on_nan": "skip"}))
    before = parameters(stage.model)
    stage.train()
    assert not changed(before, stage.model)
    assert [row["nonfinite_skipped"] for row in stage.metrics.rows] == [1, 2]
    assert [row["updates"] for row in stage.metrics.rows] == [0, 0]
    assert [row["reward/total/mean"] for row in stage.metrics.rows] == ["nan", "nan"]  # logged, not hidden


def test_a_nan_loss_skips_only_its_mini_batch(make_stage, monkeypatch) -> None:
    config = rl_config("grpo", train={"steps": 1, "epochs": 2, "mini_batches": 2, "on_nan": "skip"})
    stage = make_stage(config)
    engine = stage.build_engine()
    original, calls = engine.objective.loss, {"n": 0}

    def nan_on_second_call(batch, scores, kl_coef):
        loss, metrics = original(batch, scores, kl_coef)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), metrics

    monkeypatch.setattr(engine.objective, "loss", nan_on_second_call)
    before = parameters(engine.module)
    engine.train()
    [row] = stage.metrics.rows
    assert row["nonfinite_skipped"] == 1 and row["updates"] == 3
    assert changed(before, engine.module)


def test_stop_names_the_step_prompts_and_last_good_state(make_stage, monkeypatch, tmp_path, accelerator) -> None:
    stage = make_stage(rl_config("ppo", train={"steps": 3, "save_every": 1}))
    keep = TrainCheckpoints(tmp_path / "resume", 1, 2, {}, accelerator)
    stage.context.checkpoints = keep
    engine = stage.build_engine()
    original, steps = engine.objective.advantages, {"n": 0}

    def nan_advantages_on_step_three(*args):
        result = original(*args)
        steps["n"] += 1
        if steps["n"] == 3:
            result.advantages = result.advantages * float("nan")
        return result

    monkeypatch.setattr(engine.objective, "advantages", nan_advantages_on_step_three)
    with pytest.raises(NonFiniteLossError, match=r"advantages at step 3 \(prompts \[.*last_good.*step-00000002"):
        engine.train()
    assert torch.isfinite(torch.cat([p.flatten() for p in engine.module.parameters()])).all()
