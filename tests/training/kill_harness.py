"""Runs `posttrain` (the real CLI) in this process with two test hooks, for the crash tests.

- ``POSTTRAIN_TEST_ROWS_LOG=path``: appends ``{"stage", "step", "rows"}`` to ``path`` each time a stage asks
  for the data rows of a step (`step_rows`), and ``{"process": pid}`` at start.
- ``POSTTRAIN_TEST_KILL=stage:event:step``: the process sends itself SIGKILL, no clean-up of any kind:
  ``step`` before that 0-based step's rows are taken, ``saved`` right after the training state of 1-based
  step N is complete, ``saving`` in the middle of that save (files written, marker not yet).

Usage: ``python kill_harness.py run RECIPE [--resume ...]``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import posttrain.pipeline as pipeline
import posttrain.rl.engine as engine
import posttrain.training.loop as loop
import posttrain.training.state as state
from posttrain.cli import main

KILL = os.environ.get("POSTTRAIN_TEST_KILL", "")
ROWS_LOG = os.environ.get("POSTTRAIN_TEST_ROWS_LOG")
current_stage = [""]


def _kill_if(event: str, step: int) -> None:
    if KILL == f"{current_stage[0]}:{event}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _log(row: dict) -> None:
    if ROWS_LOG:
        with open(ROWS_LOG, "a") as handle:
            handle.write(json.dumps(row) + "\n")


original_run_stage = pipeline.Pipeline._run_stage


def run_stage(self, index, *args, **kwargs):
    current_stage[0] = self.recipe.stages[index].name
    return original_run_stage(self, index, *args, **kwargs)


original_step_rows = loop.step_rows


def step_rows(num_rows, step, global_batch, seed):
    _kill_if("step", step)
    rows = original_step_rows(num_rows, step, global_batch, seed)
    _log({"stage": current_stage[0], "step": step, "rows": rows})
    return rows


original_save = state.TrainCheckpoints.save


def save(self, step, *args, **kwargs):
    path = original_save(self, step, *args, **kwargs)
    _kill_if("saved", step)
    return path


original_marker = state._write_marker


def write_marker(staging):
    _kill_if("saving", int(staging.name.split("-")[1].split(".")[0]))
    return original_marker(staging)


pipeline.Pipeline._run_stage = run_stage
loop.step_rows = engine.step_rows = step_rows
state.TrainCheckpoints.save = save
state._write_marker = write_marker

if __name__ == "__main__":
    _log({"process": os.getpid()})
    sys.exit(main(sys.argv[1:]))
