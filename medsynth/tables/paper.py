"""The papers' published numbers (``config/paper_reported/*.csv``), looked up row by row.

Each CSV is one published table (file name = paper and table, see the folder's README), in long or
tidy form. :func:`reported` returns the value of the row whose key columns match, or
:data:`medsynth.tables.render.NOT_REPORTED` when the paper has no such row (a table still renders).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from .render import NOT_REPORTED

__all__ = ["load_reported", "reported"]


@lru_cache(maxsize=64)
def _read(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_reported(folder: str | Path, name: str) -> pd.DataFrame:
    """Table ``name`` (file stem) of the folder; an empty frame if the file does not exist."""
    path = Path(folder) / f"{name}.csv"
    if not path.exists():
        return pd.DataFrame()
    return _read(str(path.resolve()))


def _number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def reported(table: pd.DataFrame, value: str, **match) -> float | str:
    """The ``value`` column of the one row matching every ``column=value`` in ``match``.

    Numbers come back as floats, text (``"198+15"``, ``"100%"``) as text; no match, a missing
    column or an empty cell give ``"not reported"``.
    """
    if table.empty or value not in table.columns or any(k not in table.columns for k in match):
        return NOT_REPORTED
    rows = table
    for column, wanted in match.items():
        rows = rows[rows[column].astype(str) == str(wanted)]
    if rows.empty or rows.iloc[0][value] == "":
        return NOT_REPORTED
    return _number(rows.iloc[0][value])
