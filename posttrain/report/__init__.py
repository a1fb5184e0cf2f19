"""The run report: ``report.html`` (self-contained) and ``report.md`` in a run directory.

Written by ``posttrain run`` at the end of a run and by ``posttrain report RUN_DIR`` at any time:
the recipe, the per-stage evaluation table, plots of loss, reward per source, KL, response length,
accuracy per stage and timings, and sample generations of every stage on the same prompts.
"""

from __future__ import annotations

from pathlib import Path

PLOTS_FOLDER = "report_plots"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Writes ``report.html`` and ``report.md`` (plus its PNGs in ``report_plots/``); returns both paths."""
    from posttrain.report.collect import collect
    from posttrain.report.plots import all_plots
    from posttrain.report.render import render_html, render_markdown

    run = collect(run_dir)
    plots = all_plots(run)
    plots_dir = run.run_dir / PLOTS_FOLDER
    plots_dir.mkdir(exist_ok=True)
    for stale in plots_dir.glob("*.png"):
        stale.unlink()
    files = {}
    for plot in plots:
        (plots_dir / f"{plot.name}.png").write_bytes(plot.png)
        files[plot.name] = f"{PLOTS_FOLDER}/{plot.name}.png"
    html_path, md_path = run.run_dir / "report.html", run.run_dir / "report.md"
    html_path.write_text(render_html(run, plots), encoding="utf-8")
    md_path.write_text(render_markdown(run, files, plots), encoding="utf-8")
    return html_path, md_path
