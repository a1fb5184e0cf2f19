"""How a stage's progress shows on screen: a live rich bar on a terminal, plain log lines elsewhere.

The bar shows step/total, elapsed time, ETA and the headline metrics of the last logged step (loss,
reward, KL, tokens/s) when the stage logs them. Plain lines (CI, nohup, a pipe) carry every logged value
so that a log file is a complete record, plus the ETA.
"""

from __future__ import annotations

import math
import time
from typing import Literal, TextIO

ProgressMode = Literal["auto", "bar", "plain"]

# Headline metrics: (label, candidate keys in order); the first key present wins. The RL stages log the
# total reward as `reward/total/mean`; per-source keys (`reward/math/mean`) are not headlines.
HEADLINES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "loss/total", "policy_loss", "loss/policy")),
    ("reward", ("reward/total/mean", "reward", "reward/mean", "reward_mean", "reward/total")),
    ("kl", ("kl", "kl/mean", "kl_mean", "objective/kl")),
    ("tok/s", ("tokens_per_s",)),
)


def headline(values: dict[str, float]) -> list[tuple[str, float]]:
    """The (label, value) pairs a progress bar shows, in a fixed order, for the keys present.

    >>> headline({"grad_norm": 1.0, "reward/mean": 0.5, "loss": 2.0})
    [('loss', 2.0), ('reward', 0.5)]
    """
    shown = []
    for label, keys in HEADLINES:
        key = next((k for k in keys if k in values), None)
        if key is not None:
            shown.append((label, values[key]))
    return shown


def format_value(value: float | int | str) -> str:
    """Short, readable numbers: 4 significant digits, thousands as `k`.

    >>> format_value(0.123456), format_value(45231.7), format_value(3)
    ('0.1235', '45.2k', '3')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= 10_000:
        return f"{value / 1000:.1f}k"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_duration(seconds: float) -> str:
    """`1:02:03` / `2:03` style durations.

    >>> format_duration(3723), format_duration(83.4)
    ('1:02:03', '1:23')
    """
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(elapsed: float, step: int, total: int | None) -> str | None:
    """Time left at the mean pace so far; None when it cannot be told (no total, nothing done).

    >>> eta(30.0, 10, 40), eta(5.0, 0, 40), eta(5.0, 4, None)
    ('1:30', None, None)
    """
    if not total or step <= 0:
        return None
    return format_duration(elapsed / step * max(0, total - step))


class PlainProgress:
    """One line per logged step: ``[sft] step 30/500 eta 1:20 loss=2.31 ...``."""

    def __init__(self, stage: str, stream: TextIO):
        self.stage = stage
        self.stream = stream
        self.started = time.perf_counter()

    def update(self, step: int, total: int | None, values: dict[str, float]) -> None:
        progress = f"{step}/{total}" if total else str(step)
        left = eta(time.perf_counter() - self.started, step, total) if total and step < total else None
        eta_text = f" eta {left}" if left else ""
        shown = " ".join(f"{k}={format_value(v)}" for k, v in values.items())
        print(f"[{self.stage}] step {progress}{eta_text} {shown}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class BarProgress:
    """A live rich progress bar, started at the first update and left on screen when closed."""

    def __init__(self, stage: str, stream: TextIO, force_terminal: bool = False):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(file=stream, force_terminal=force_terminal or None)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            TextColumn("{task.fields[stats]}"),
            console=console,
            refresh_per_second=4,
        )
        self.stage = stage
        self.task = None
        self.created = self.progress.get_time()

    def update(self, step: int, total: int | None, values: dict[str, float]) -> None:
        fields = {
            "stats": "  ".join(f"{label} {format_value(value)}" for label, value in headline(values)),
            "eta": eta(self.progress.get_time() - self.created, step, total) or "-:--",
        }
        if self.task is None:
            self.task = self.progress.add_task(self.stage, total=total, completed=step, **fields)
            self.progress.tasks[-1].start_time = self.created  # elapsed time counts from the stage's start
            self.progress.start()
        else:
            self.progress.update(self.task, completed=step, total=total, **fields)

    def close(self) -> None:
        if self.task is not None:
            self.progress.refresh()
            self.progress.stop()
            self.task = None


def make_progress(mode: ProgressMode, stage: str, stream: TextIO) -> PlainProgress | BarProgress:
    """A bar when asked for or when ``stream`` is a terminal (``auto``), plain lines otherwise."""
    if mode == "bar":
        return BarProgress(stage, stream, force_terminal=True)
    if mode == "auto" and _is_terminal(stream):
        return BarProgress(stage, stream)
    return PlainProgress(stage, stream)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
