"""Which saved training state a stage continues from (``posttrain run --resume``), and cleaning up the rest.

A stage that saves its training state (`train.save_every`) writes ``stages/<stage>/resume/step-<N>/``
(`posttrain.training.state`). Before the stage runs, the pipeline asks `stage_train_checkpoints` where its
states go and which one to continue from: half-written folders a killed process left are removed; without
``resume`` old states are deleted; with it the newest complete one is verified and compared with the stage's
config, data and parent before anything is loaded, and ``metrics.jsonl`` is cut back to its step.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.config.stages import StageConfig
from posttrain.errors import CheckpointError
from posttrain.files import write_text_atomic


def stage_train_checkpoints(
    stage: StageConfig,
    folder: Path,
    identity: dict[str, Any],
    accelerator: Any,
    *,
    resume: bool,
    restart_changed: bool,
    say: Callable[[str], None],
):
    """The stage's resumable training state (`TrainCheckpoints`): where it goes, and which saved one to
    continue from (its ``resume_from``; None to start afresh).

    ``identity`` is what the state must have been made with (fingerprint, config, data, parent, seed, world
    size); a saved state with another identity is refused under ``resume`` unless ``restart_changed``.

    Raises:
        CheckpointError: ``resume`` without ``restart_changed``, and the newest state was made with other
            settings (each change listed), or it fails verification.
    """
    from posttrain.training.state import (
        TrainCheckpoints, describe_changes, latest_checkpoint, read_state, remove_stale_staging, verify_checkpoint,
    )

    resume_dir = folder / "resume"
    if accelerator.is_main_process:
        for removed in remove_stale_staging(folder) + remove_stale_staging(resume_dir):
            say(f"[{stage.name}] removed a half-written checkpoint: {removed}")
    accelerator.wait_for_everyone()
    latest = latest_checkpoint(resume_dir)
    spec = getattr(stage, "train", None)  # stages that train nothing (e.g. `constitutional`) save no state
    keep = TrainCheckpoints(
        resume_dir, getattr(spec, "save_every", None), getattr(spec, "keep_last", 1), identity, accelerator
    )
    if latest is None:
        if resume:
            say(f"[{stage.name}] no saved training state to resume from: starting the stage")
        return keep
    state = read_state(latest)
    changes = describe_changes(state["identity"], identity)
    if not resume or changes:
        if resume and not restart_changed:
            raise CheckpointError(
                f"stage {stage.name!r}: the training state saved at {latest} was made with other settings:\n  "
                + "\n  ".join(changes)
                + "\nUndo the change to continue from it, or pass --restart-changed to start this stage afresh"
            )
        why = "it was made with other settings" if changes else "--resume was not given"
        say(f"[{stage.name}] starting afresh, deleting the saved training state at {latest} ({why})")
        if accelerator.is_main_process:
            shutil.rmtree(resume_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        return keep
    verify_checkpoint(latest)
    if accelerator.is_main_process:
        truncate_metrics(folder / "metrics.jsonl", state["step"])
    say(f"[{stage.name}] resuming from step {state['step']}: {latest}")
    keep.resume_from = latest
    return keep


def truncate_metrics(path: Path, step: int) -> None:
    """Keeps the rows of ``metrics.jsonl`` up to ``step``: the later ones are trained again on resume."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut off by the kill
        if row.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))
