"""Trackers: TensorBoard event files hold the logged scalars (offline), a re-run replaces them, W&B
(when installed) logs offline, and a tracker asked for but not installed fails before training."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest

from posttrain.config.reporting import LoggingConfig
from posttrain.errors import RecipeError
from posttrain.training.metrics import MetricsWriter
from posttrain.training.trackers import check_trackers, open_trackers


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def log_steps(trackers, values_per_step: list[dict]) -> None:
    writer = MetricsWriter(None, "grpo", stream=io.StringIO(), trackers=trackers)
    for step, values in enumerate(values_per_step, start=1):
        writer.log(step, values, total=len(values_per_step))
    writer.close()


def test_tensorboard_by_default_records_every_numeric_key(tmp_path: Path) -> None:
    config = LoggingConfig()
    assert config.report_to == ["tensorboard"]
    trackers = open_trackers(config, tmp_path, "micro", "grpo", {})
    log_steps(trackers, [{"loss": 1.5, "reward/math": 0.25, "note": "text"}, {"loss": 0.5, "reward/math": 0.75}])
    found = scalars(tmp_path / "tensorboard" / "grpo")
    assert set(found) == {"loss", "reward/math"}
    assert found["loss"] == [(1, 1.5), (2, 0.5)] and found["reward/math"] == [(1, 0.25), (2, 0.75)]


def test_a_rerun_stage_replaces_its_curves(tmp_path: Path) -> None:
    log_steps(open_trackers(LoggingConfig(), tmp_path, "micro", "sft", {}), [{"loss": 9.0}] * 3)
    log_steps(open_trackers(LoggingConfig(), tmp_path, "micro", "sft", {}), [{"loss": 1.0}])
    assert scalars(tmp_path / "tensorboard" / "sft") == {"loss": [(1, 1.0)]}


def test_a_resumed_stage_keeps_the_steps_before_it_and_redraws_the_later_ones(tmp_path: Path) -> None:
    # steps 1-3 logged, then a kill; the stage resumes from the state saved at step 2 and redoes step 3 on
    import time

    log_steps(open_trackers(LoggingConfig(), tmp_path, "micro", "sft", {}), [{"loss": 9.0}, {"loss": 8.0}, {"loss": 7.0}])
    time.sleep(1.1)  # event files are named by the second they are opened
    trackers = open_trackers(LoggingConfig(), tmp_path, "micro", "sft", {}, resume_step=2)
    trackers[0].log(3, {"loss": 6.0})
    trackers[0].log(4, {"loss": 5.0})
    trackers[0].close()
    assert scalars(tmp_path / "tensorboard" / "sft") == {"loss": [(1, 9.0), (2, 8.0), (3, 6.0), (4, 5.0)]}


def test_no_trackers_when_report_to_is_empty(tmp_path: Path) -> None:
    assert open_trackers(LoggingConfig(report_to=[]), tmp_path, "micro", "sft", {}) == []
    assert not (tmp_path / "tensorboard").exists()


def test_missing_tracker_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RecipeError, match=r"report_to lists 'wandb' but the 'wandb' package is not installed: pip install wandb"):
        check_trackers(LoggingConfig(report_to=["tensorboard", "wandb"]))
    check_trackers(LoggingConfig())


def test_wandb_logs_offline_one_run_per_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tracker,) = open_trackers(LoggingConfig(report_to=["wandb"]), tmp_path, "micro", "grpo", {"lr": 0.001})
    tracker.log(1, {"loss": 2.0, "reward/math": 0.5})
    tracker.log(2, {"loss": 1.0, "reward/math": float("nan")})
    run = tracker.run
    assert run.name == "micro/grpo" and run.group == "micro" and run.config["lr"] == 0.001
    assert run.summary["loss"] == 1.0 and run.summary["reward/math"] == 0.5  # NaN is not sent
    tracker.close()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
