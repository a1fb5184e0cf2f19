"""The run report as one self-contained HTML page and as Markdown.

The HTML embeds its plots as base64 PNG and its style inline, and links nothing: it opens offline and can
be mailed or attached as one file. The Markdown refers to the same plots as PNG files written beside it.
"""

from __future__ import annotations

import base64
import html
import time
from typing import Any

from posttrain.report.table import format_cell as cell, table_columns
from posttrain.report.collect import RunRecord, StageRecord
from posttrain.report.plots import Plot, stage_seconds

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; padding: 0 24px; max-width: 1400px; color: #222; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 30px; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #c8c8c8; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #e4e4e4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 8px 16px 16px 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12.5px; }
pre.recipe { background: #f6f6f6; padding: 10px; border: 1px solid #ddd; }
table.samples td { min-width: 160px; max-width: 420px; overflow-wrap: anywhere; }
table.failed td { color: #a00000; }
"""


def timing_rows(run: RunRecord) -> list[list[str]]:
    """Rows of the timings table: stage, kind, steps, tokens, tokens/s, seconds per phase."""
    rows = []
    for stage in run.stages:
        seconds = stage_seconds(stage)
        summary = (stage.manifest or {}).get("summary", {})
        loop_seconds, tokens = summary.get("seconds"), summary.get("tokens")
        rate = round(tokens / loop_seconds) if tokens and loop_seconds else None
        rows.append([
            stage.name, stage.kind, "failed" if stage.failure else cell(summary.get("steps")), cell(tokens), cell(rate),
            *(cell(round(seconds[part], 1)) if part in seconds else "-" for part in ("train", "evaluate", "samples")),
        ])
    return rows


def failure_rows(run: RunRecord) -> list[tuple[str, str]]:
    """(stage, error text) of each stage that failed."""
    return [(stage.name, stage.failure) for stage in run.stages if stage.failure]


def curation_rows(run: RunRecord) -> list[list[str]]:
    """Rows of the curation table: stage, rule (or evaluation set), rows removed, a few removed rows."""
    rows = []
    for stage in run.stages:
        curation = (stage.manifest or {}).get("summary", {}).get("curation")
        if not curation:
            continue
        rows.append([stage.name, "rows read -> written", f"{curation['rows_read']} -> {curation['rows_written']}", ""])
        for rule, count in curation["removed"].items():
            shown = curation["examples"].get(rule, [])
            rows.append([stage.name, rule, str(count), "\n".join(f"{e['where']}: {e['text']} ({e['reason']})" for e in shown)])
        for name, count in curation["contaminated_by_set"].items():
            rows.append([stage.name, f"contaminated by {name}", str(count), ""])
    for stage in run.stages:  # a training stage's own data (`posttrain.curation.training`)
        checked = (stage.manifest or {}).get("summary", {}).get("decontamination")
        if not checked:
            continue
        shown = "\n".join(f"{e['where']}: {e['text']} ({e['reason']})" for e in checked["examples"])
        rows.append([stage.name, "decontamination (training data)", f"{checked['rows_removed']} of {checked['rows_read']}", shown])
        for name, count in checked["contaminated_by_set"].items():
            rows.append([stage.name, f"contaminated by {name}", str(count), ""])
    return rows


CURATION_HEADER = ["stage", "rule", "rows removed", "examples"]
TIMING_HEADER = ["stage", "kind", "steps", "tokens", "tokens/s", "train s", "evaluate s", "samples s"]


def sample_grid(run: RunRecord) -> tuple[list[str], list[dict[str, Any]], list[list[str]]]:
    """(stage names, prompts, completions[prompt][stage]) for the stages that stored samples on the
    same prompts as the first one, so each row compares one prompt across stages."""
    with_samples = [s for s in run.stages if s.samples and s.samples.get("samples")]
    if not with_samples:
        return [], [], []
    prompts = with_samples[0].samples["samples"]
    keys = [p["prompt"] for p in prompts]
    stages = [s for s in with_samples if [p["prompt"] for p in s.samples["samples"]] == keys]
    grid = [[s.samples["samples"][i]["completion"].strip() or "(empty)" for s in stages] for i in range(len(prompts))]
    return [s.name for s in stages], prompts, grid


def episode_grid(stage: StageRecord) -> tuple[list[str], list[list[str]]]:
    """(labels, transcripts[episode][label]) of a stage's held-out episodes (`episodes.json`)."""
    labels = [label for label, samples in (stage.episodes or {}).items() if isinstance(samples, list) and samples]
    if not labels:
        return [], []
    count = min(len(stage.episodes[label]) for label in labels)
    grid = [
        [f"{stage.episodes[label][i]['transcript']}\n(reward {stage.episodes[label][i]['reward']:g})" for label in labels]
        for i in range(count)
    ]
    return labels, grid


def _generated() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def render_html(run: RunRecord, plots: list[Plot]) -> str:
    """The report as one HTML page with everything inline."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>posttrain report: {esc(run.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Run report: {esc(run.name)}</h1>",
        f'<p class="meta">{esc(str(run.run_dir))} · generated {_generated()}</p>',
        "<h2>Evaluation per stage</h2>",
    ]
    columns = table_columns(run.table)
    if run.table:
        parts.append('<table class="evaluation"><tr><th>stage</th>' + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
        for row in run.table:
            cells = "".join(f'<td class="num">{esc(cell(row.get(c)))}</td>' for c in columns)
            parts.append(f"<tr><td>{esc(str(row['stage']))}</td>{cells}</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No evaluations recorded.</p>")
    parts.append("<h2>Plots</h2>")
    for plot in plots:
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<figure id="plot-{esc(plot.name)}"><img alt="{esc(plot.title)}" src="data:image/png;base64,{data}"></figure>'
        )
    names, prompts, grid = sample_grid(run)
    if names:
        parts.append("<h2>Samples (greedy, same prompts)</h2>")
        has_answer = any("answer" in p for p in prompts)
        header = "<th>prompt</th>" + ("<th>reference</th>" if has_answer else "") + "".join(f"<th>{esc(n)}</th>" for n in names)
        parts.append(f'<table class="samples"><tr>{header}</tr>')
        for prompt, completions in zip(prompts, grid):
            row = f"<td><pre>{esc(prompt['prompt'])}</pre></td>"
            if has_answer:
                row += f"<td><pre>{esc(prompt.get('answer', ''))}</pre></td>"
            row += "".join(f"<td><pre>{esc(c)}</pre></td>" for c in completions)
            parts.append(f"<tr>{row}</tr>")
        parts.append("</table>")
    for stage in run.stages:
        labels, episodes = episode_grid(stage)
        if labels:
            parts.append(f"<h2>Episodes: {esc(stage.name)} (held-out, greedy)</h2>")
            parts.append('<table class="samples"><tr>' + "".join(f"<th>{esc(label)}</th>" for label in labels) + "</tr>")
            parts += ["<tr>" + "".join(f"<td><pre>{esc(t)}</pre></td>" for t in row) + "</tr>" for row in episodes]
            parts.append("</table>")
    if curation := curation_rows(run):
        parts.append('<h2>Curation</h2><table class="curation"><tr>' + "".join(f"<th>{h}</th>" for h in CURATION_HEADER) + "</tr>")
        parts += ["<tr>" + "".join(f"<td><pre>{esc(v)}</pre></td>" for v in values) + "</tr>" for values in curation]
        parts.append("</table>")
    if failed := failure_rows(run):
        parts.append('<h2>Failed</h2><table class="failed"><tr><th>stage</th><th>error</th></tr>')
        parts += [f"<tr><td>{esc(name)}</td><td><pre>{esc(error)}</pre></td></tr>" for name, error in failed]
        parts.append("</table>")
    parts.append("<h2>Timings</h2>")
    parts.append('<table class="timings"><tr>' + "".join(f"<th>{h}</th>" for h in TIMING_HEADER) + "</tr>")
    for values in timing_rows(run):
        parts.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>")
    parts.append("</table>")
    parts.append(f'<h2>Recipe</h2><pre class="recipe">{esc(run.recipe_text)}</pre>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>") or " "


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(run: RunRecord, plot_files: dict[str, str], plots: list[Plot]) -> str:
    """The report as Markdown; ``plot_files`` maps a plot's name to its PNG path relative to the file."""
    lines = [f"# Run report: {run.name}", "", f"`{run.run_dir}` · generated {_generated()}", "", "## Evaluation per stage", ""]
    columns = table_columns(run.table)
    if run.table:
        lines += _md_table(["stage", *columns], [[str(row["stage"]), *(cell(row.get(c)) for c in columns)] for row in run.table])
    else:
        lines.append("No evaluations recorded.")
    lines += ["", "## Plots", ""]
    lines += [f"![{plot.title}]({plot_files[plot.name]})\n" for plot in plots]
    names, prompts, grid = sample_grid(run)
    if names:
        lines += ["## Samples (greedy, same prompts)", ""]
        has_answer = any("answer" in p for p in prompts)
        header = ["prompt", *(["reference"] if has_answer else []), *names]
        rows = [
            [p["prompt"], *([p.get("answer", "")] if has_answer else []), *completions]
            for p, completions in zip(prompts, grid)
        ]
        lines += _md_table(header, rows) + [""]
    for stage in run.stages:
        labels, episodes = episode_grid(stage)
        if labels:
            lines += [f"## Episodes: {stage.name} (held-out, greedy)", ""] + _md_table(labels, episodes) + [""]
    if curation := curation_rows(run):
        lines += ["## Curation", ""] + _md_table(CURATION_HEADER, curation) + [""]
    if failed := failure_rows(run):
        lines += ["## Failed", ""] + _md_table(["stage", "error"], [list(row) for row in failed]) + [""]
    lines += ["## Timings", ""] + _md_table(TIMING_HEADER, timing_rows(run))
    lines += ["", "## Recipe", "", "```yaml", run.recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)
