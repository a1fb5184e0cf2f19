"""The per-stage evaluation table as text: metric columns in first-seen order, one row per stage.

Printed at the end of a run (`posttrain.run`) and shown in the run report (`posttrain.report.render`).
"""

from __future__ import annotations

from typing import Any


def table_columns(table: list[dict[str, Any]]) -> list[str]:
    """Metric columns of the evaluation table in first-seen order, without example counts (``.n``)."""
    return [c for c in dict.fromkeys(k for row in table for k in row) if c != "stage" and not c.endswith(".n")]


def format_table(table: list[dict[str, Any]]) -> str:
    """The evaluation table as aligned plain text (metrics as columns, one row per stage)."""
    columns = table_columns(table)
    header = ["stage"] + columns
    body = [[row["stage"]] + [format_cell(row.get(c)) for c in columns] for row in table]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    """A table cell: 4 significant digits for floats, `-` for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
