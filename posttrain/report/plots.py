"""The report's plots as PNG bytes (matplotlib, Agg, no pyplot state): training curves per stage,
accuracy per stage, and where the time went.

Training curves pick metric keys by name: ``loss`` and ``*_loss``; the reward per source,
``reward/<source>/mean`` (``reward/total/mean`` is the weighted total; a plain ``reward`` or
``reward/<source>`` works too); ``kl``; response length; held-out metrics logged during training
(``heldout/...``). A plot with no data is left out.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable

from posttrain.report.table import table_columns
from posttrain.report.collect import RunRecord, StageRecord


@dataclass(frozen=True)
class Plot:
    """One figure: a file stem, a title, and the PNG."""

    name: str
    title: str
    png: bytes


def _is_loss(key: str) -> bool:
    return key == "loss" or key.endswith("_loss") or key.startswith("loss/")


def _is_reward(key: str) -> bool:
    """The mean reward per source and in total; not the rates, timings and weights logged beside them."""
    parts = key.split("/")
    if parts[0] != "reward":
        return False
    return len(parts) == 1 or (len(parts) == 2 and not parts[1].endswith("rate")) or (len(parts) == 3 and parts[2] == "mean")


def _is_kl(key: str) -> bool:
    return key in ("kl", "kl_mean") or key.startswith("kl/")


def _is_length(key: str) -> bool:
    return "response_length" in key or "completion_length" in key


def _is_heldout(key: str) -> bool:
    return key.startswith("heldout/") and key != "heldout/hacking_warning"


def _is_episode(key: str) -> bool:
    """Per-episode means of an RL stage with an environment (`posttrain.rl.episodes`); not the timings."""
    return key.startswith("episodes/") and key not in ("episodes/length", "episodes/environment_seconds")


# (file stem, title, which keys) for the per-stage training curves
TRAINING_PLOTS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("loss", "Training loss", _is_loss),
    ("reward", "Reward per source", _is_reward),
    ("kl", "KL to the reference", _is_kl),
    ("response_length", "Response length (tokens)", _is_length),
    ("heldout", "Held-out metrics during training", _is_heldout),
    ("episodes", "Episodes: turns, tool calls and errors per episode, truncated share, failures", _is_episode),
)


def _label(key: str) -> str:
    """Legend text: `reward/math/mean` -> `math`."""
    if key.startswith("reward/"):
        return key.removeprefix("reward/").removesuffix("/mean")
    return key


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def _series(stage: StageRecord, keep: Callable[[str], bool]) -> dict[str, tuple[list[int], list[float]]]:
    """Key -> (steps, values) for the matching keys of a stage's metrics."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in stage.metrics:
        for key, value in row.items():
            number = _number(value)
            if key in ("step", "time") or number is None or not keep(key):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(int(row["step"]))
            values.append(number)
    return series


def _figure(panels: int, width: float = 4.4, height: float = 3.0):
    from matplotlib.figure import Figure

    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), dpi=100, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # no "Software" field: the PNG metadata would otherwise carry matplotlib's web address
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def training_plot(run: RunRecord, name: str, title: str, keep: Callable[[str], bool]) -> Plot | None:
    """One panel per stage that logged matching keys; one line per key."""
    from matplotlib.ticker import MaxNLocator

    panels = [(stage, _series(stage, keep)) for stage in run.stages]
    panels = [(stage, series) for stage, series in panels if series]
    if not panels:
        return None
    figure, axes = _figure(len(panels))
    for axis, (stage, series) in zip(axes, panels):
        for key, (steps, values) in series.items():
            axis.plot(steps, values, marker="." if len(steps) < 30 else None, label=_label(key))
        axis.set_title(f"{stage.name} ({stage.kind})", fontsize=10)
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        logged = {step for steps, _ in series.values() for step in steps}
        if len(logged) == 1:  # one logged step: centre it rather than zoom into a fraction of a step
            axis.set_xlim(min(logged) - 1, min(logged) + 1)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    return Plot(name, title, _png(figure))


def accuracy_plot(run: RunRecord) -> Plot | None:
    """Every accuracy metric of the evaluation table across the stages, in run order."""
    columns = [c for c in table_columns(run.table) if "accuracy" in c]
    if not columns:
        return None
    stages = [row["stage"] for row in run.table]
    figure, (axis,) = _figure(1, width=max(5.0, 1.1 * len(stages) + 2), height=3.4)
    for column in columns:
        # a stage without the metric (a reward model has no generation accuracy) is skipped, not a gap
        points = [(i, _number(row.get(column))) for i, row in enumerate(run.table)]
        points = [(i, v) for i, v in points if v is not None]
        axis.plot([i for i, _ in points], [v for _, v in points], marker="o", label=column)
    axis.set_xticks(range(len(stages)), stages)
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("Accuracy per stage")
    return Plot("accuracy", "Accuracy per stage", _png(figure))


def stage_seconds(stage: StageRecord) -> dict[str, float]:
    """Wall-clock seconds of a stage's training (load, train, save), evaluation and sampling."""
    out: dict[str, float] = {}
    manifest = stage.manifest or {}
    if isinstance(manifest.get("started"), (int, float)) and isinstance(manifest.get("finished"), (int, float)):
        out["train"] = manifest["finished"] - manifest["started"]
    if stage.evaluation and isinstance(stage.evaluation.get("seconds"), (int, float)):
        out["evaluate"] = stage.evaluation["seconds"]
    if stage.samples and isinstance(stage.samples.get("seconds"), (int, float)):
        out["samples"] = stage.samples["seconds"]
    return out


def timings_plot(run: RunRecord) -> Plot | None:
    """Horizontal stacked bars: training, evaluation and sampling time per stage."""
    timed = [(stage.name, stage_seconds(stage)) for stage in run.stages]
    timed = [(name, seconds) for name, seconds in timed if seconds]
    if not timed:
        return None
    figure, (axis,) = _figure(1, width=6.5, height=0.5 * len(timed) + 1.4)
    names = [name for name, _ in timed]
    left = [0.0] * len(timed)
    for part in ("train", "evaluate", "samples"):
        widths = [seconds.get(part, 0.0) for _, seconds in timed]
        axis.barh(names, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths)]
    axis.invert_yaxis()
    axis.set_xlabel("seconds")
    axis.legend(fontsize=8)
    axis.set_title("Time per stage")
    return Plot("timings", "Time per stage", _png(figure))


def all_plots(run: RunRecord) -> list[Plot]:
    """Every plot that has data, in report order."""
    plots = [training_plot(run, *spec) for spec in TRAINING_PLOTS]
    plots += [accuracy_plot(run), timings_plot(run)]
    return [plot for plot in plots if plot is not None]
