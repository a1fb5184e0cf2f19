"""Per-step metrics: one JSON line per logged step in `metrics.jsonl`, trackers, and progress on screen.

Every stage logs through a `MetricsWriter`, so every stage gets the same three outputs:

- ``metrics.jsonl`` (always): ``{"stage", "step", "time", **values}`` per logged step;
- trackers (TensorBoard by default, W&B when asked for; see `posttrain.training.trackers`);
- progress: a live bar per stage on a terminal, plain log lines otherwise (`posttrain.training.progress`).

Key names the progress bar and the run report understand: ``loss`` (and ``*_loss``);
``reward/total/mean`` (or ``reward``) and ``reward/<source>/mean`` per reward source; ``kl``;
``response_length``; ``heldout/...``; ``tokens_per_s``. Every key is recorded in the files and trackers.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

from posttrain.training.progress import ProgressMode, make_progress
from posttrain.training.trackers import Tracker


class MetricsWriter:
    """Appends metric rows to a file, forwards them to trackers, and shows progress.

    Only the main process writes; NaN and inf are written as strings so they are never hidden. Call
    `close` when the stage ends (the pipeline does) to finish the bar and flush the trackers.
    """

    def __init__(
        self,
        path: Path | None,
        stage: str,
        is_main: bool = True,
        stream: TextIO | None = None,
        *,
        progress: ProgressMode = "auto",
        trackers: Sequence[Tracker] = (),
    ):
        self.path = path
        self.stage = stage
        self.is_main = is_main
        self.stream = stream if stream is not None else sys.stdout
        self.started = time.perf_counter()
        self.rows: list[dict] = []
        self.trackers = list(trackers) if is_main else []
        self.progress = make_progress(progress, stage, self.stream) if is_main else None
        if path is not None and is_main:
            path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, values: dict[str, float], total: int | None = None) -> None:
        """Records the metrics of optimizer step ``step`` (1-based) of ``total``."""
        if not self.is_main:
            return
        row = {"stage": self.stage, "step": step, "time": round(time.perf_counter() - self.started, 3)}
        row.update({k: _jsonable(v) for k, v in values.items()})
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log(step, values)
        self.progress.update(step, total, values)

    def close(self) -> None:
        """Leaves the final progress bar on screen and closes the trackers."""
        if self.progress is not None:
            self.progress.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _jsonable(value: float) -> float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
