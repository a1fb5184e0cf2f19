"""Experiment trackers that receive every logged step: TensorBoard (default) and Weights & Biases.

Each stage gets its own tracker run: TensorBoard event files in ``RUN_DIR/tensorboard/<stage>/`` (so
``tensorboard --logdir RUN_DIR/tensorboard`` overlays the stages), and one W&B run per stage named
``RECIPE/STAGE`` in the group ``RECIPE``. Metric keys are used as tags unchanged (``loss``,
``reward/math``); non-numeric values are not sent.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any, Protocol

from posttrain.config.reporting import LoggingConfig
from posttrain.errors import RecipeError


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _numeric(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker:
    """Scalars to a TensorBoard event file (``torch.utils.tensorboard``, needs the `tensorboard` package)."""

    def __init__(self, folder: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # a stage that re-runs replaces its curves rather than drawing a second line over the first; one that
        # resumes after step N keeps steps <= N and has TensorBoard drop the later ones (they are redone)
        if resume_step is None:
            shutil.rmtree(folder, ignore_errors=True)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in _numeric(values).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per stage, grouped by recipe name (``WANDB_MODE=offline`` works without network)."""

    def __init__(self, project: str, recipe_name: str, stage: str, config: dict[str, Any], folder: Path):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, group=recipe_name, name=f"{recipe_name}/{stage}", job_type=stage,
            config=config, dir=str(folder),
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        finite = {k: v for k, v in _numeric(values).items() if math.isfinite(v)}
        self.run.log(finite, step=step, commit=True)  # one call holds the whole step

    def close(self) -> None:
        self.run.finish()


def check_trackers(config: LoggingConfig) -> None:
    """Fails before any training when a requested tracker's package is missing."""
    needs = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for name in config.report_to:
        if importlib.util.find_spec(needs[name]) is None:
            raise RecipeError(
                f"logging.report_to lists {name!r} but the {needs[name]!r} package is not installed: "
                f"pip install {needs[name]} (or remove it from report_to)"
            )


def open_trackers(
    config: LoggingConfig,
    run_dir: Path,
    recipe_name: str,
    stage: str,
    stage_config: dict[str, Any],
    resume_step: int | None = None,
) -> list[Tracker]:
    """The trackers a recipe asks for, opened for one stage (``resume_step``: the stage resumes after it)."""
    check_trackers(config)
    trackers: list[Tracker] = []
    if "tensorboard" in config.report_to:
        trackers.append(TensorBoardTracker(run_dir / "tensorboard" / stage, resume_step))
    if "wandb" in config.report_to:
        trackers.append(WandbTracker(config.wandb_project, recipe_name, stage, stage_config, run_dir))
    return trackers
