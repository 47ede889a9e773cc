"""Writing a paper table: one CSV (full precision) and one Markdown file (rounded, with its caption).

Cells the pipeline could not fill say why in words (``"unavailable: no Inception weights"``,
``"not reported"``); numbers are never invented to fill a gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medsynth.fsutil import write_csv_atomic, write_text_atomic

__all__ = ["NOT_REPORTED", "NOT_MEASURED", "format_cell", "write_table"]

NOT_REPORTED = "not reported"
NOT_MEASURED = "not measured in this study"


def format_cell(value, digits: int = 4) -> str:
    """Numbers rounded for reading (``digits`` significant digits, integers as is); text unchanged; NaN -> ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}"
    return str(value)


def write_table(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path, title: str,
                notes: Sequence[str] = (), digits: int = 4) -> None:
    """Write ``table`` as CSV and as a Markdown section (title, table, notes)."""
    write_csv_atomic(table, csv_path)
    shown = table.astype(object).map(lambda v: format_cell(v, digits))
    lines = [f"## {title}", "", shown.to_markdown(index=False), ""]
    lines += [f"- {n}" for n in notes]
    write_text_atomic(md_path, "\n".join(lines).rstrip() + "\n")
