"""Writing a paper table: one CSV (full precision) and one Markdown file (rounded, with its caption).

Cells the pipeline could not fill say why in words (``"unavailable: no Inception weights"``,
``"not reported"``); numbers are never invented to fill a gap. A :class:`Measured` cell (a value with
its bootstrap interval) is one ``value [low, high]`` cell in Markdown; in the CSV the value keeps its
column and the bounds get two columns beside it (``<column> CI low`` / ``<column> CI high``), and a
note says how the intervals were made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medsynth.fsutil import write_csv_atomic, write_text_atomic

__all__ = ["Measured", "NOT_REPORTED", "NOT_MEASURED", "expand_intervals", "format_cell", "write_table"]

NOT_REPORTED = "not reported"
NOT_MEASURED = "not measured in this study"


@dataclass(frozen=True)
class Measured:
    """A table value with its interval; ``how``: the interval's level, method and resampling unit in words;
    ``spread``: the standard deviation across ``seeds`` training seeds (config ``replicates``), if pooled."""

    value: float
    low: float
    high: float
    how: str
    spread: float | None = None
    seeds: int | None = None


def expand_intervals(table: pd.DataFrame, digits: int = 4) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(csv_table, shown_table, notes)``: :class:`Measured` cells as value + ``CI low`` / ``CI high`` columns
    (CSV) and as ``value [low, high]`` text (Markdown, already formatted), with one note per interval kind."""
    csv_columns: dict = {}
    shown = table.astype(object).copy()
    hows: list[str] = []
    seeds: list[int] = []
    for column in table.columns:
        cells = list(table[column])
        measured = [isinstance(c, Measured) for c in cells]
        csv_columns[column] = [c.value if isinstance(c, Measured) else c for c in cells]
        if any(measured):
            csv_columns[f"{column} CI low"] = [c.low if isinstance(c, Measured) else "" for c in cells]
            csv_columns[f"{column} CI high"] = [c.high if isinstance(c, Measured) else "" for c in cells]
            if any(isinstance(c, Measured) and c.spread is not None for c in cells):
                csv_columns[f"{column} seed sd"] = [c.spread if isinstance(c, Measured) and c.spread is not None
                                                    else "" for c in cells]
            for c in cells:
                if isinstance(c, Measured) and c.how not in hows:
                    hows.append(c.how)
                if isinstance(c, Measured) and c.seeds and c.spread is not None and c.seeds not in seeds:
                    seeds.append(c.seeds)
    for column in table.columns:
        shown[column] = [_shown(c, digits) if isinstance(c, Measured) else c for c in table[column]]
    notes = [f"value [low, high]: {how}" for how in hows]
    notes += [f"value ± sd: the mean over {n} training seeds (config replicates) ± their standard deviation"
              for n in seeds]
    return pd.DataFrame(csv_columns, index=table.index), shown, notes


def _shown(c: Measured, digits: int) -> str:
    spread = f" ± {format_cell(c.spread, digits)}" if c.spread is not None else ""
    return f"{format_cell(c.value, digits)}{spread} [{format_cell(c.low, digits)}, {format_cell(c.high, digits)}]"


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
    """Write ``table`` as CSV and as a Markdown section (title, table, notes); see :func:`expand_intervals`."""
    csv_table, shown, interval_notes = expand_intervals(table, digits)
    write_csv_atomic(csv_table, csv_path)
    shown = shown.map(lambda v: format_cell(v, digits))
    lines = [f"## {title}", "", shown.to_markdown(index=False), ""]
    lines += [f"- {n}" for n in [*notes, *interval_notes]]
    write_text_atomic(md_path, "\n".join(lines).rstrip() + "\n")
