"""Per-step metrics: one JSON line per logged step in `metrics.jsonl`, and a progress line on screen."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TextIO


class MetricsWriter:
    """Appends ``{"stage", "step", "time", **metrics}`` lines to a file and prints a short progress line.

    Only the main process writes; NaN and inf are written as strings so they are never hidden.
    """

    def __init__(self, path: Path | None, stage: str, is_main: bool = True, stream: TextIO | None = None):
        self.path = path
        self.stage = stage
        self.is_main = is_main
        self.stream = stream if stream is not None else sys.stdout
        self.started = time.perf_counter()
        self.rows: list[dict] = []
        if path is not None and is_main:
            path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, values: dict[str, float], total: int | None = None) -> None:
        if not self.is_main:
            return
        row = {"stage": self.stage, "step": step, "time": round(time.perf_counter() - self.started, 3)}
        row.update({k: _jsonable(v) for k, v in values.items()})
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        shown = " ".join(f"{k}={_short(v)}" for k, v in values.items())
        progress = f"{step}/{total}" if total else str(step)
        print(f"[{self.stage}] step {progress} {shown}", file=self.stream, flush=True)


def _jsonable(value: float) -> float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _short(value: float) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
