"""Paper tables: measured values beside the published ones (one CSV + Markdown file per table)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .builders import load_json
from .paper import load_reported, reported
from .registry import TABLES, TableSpec, build_table, table_names, table_params
from .render import NOT_MEASURED, NOT_REPORTED, write_table

__all__ = ["TABLES", "TableSpec", "NOT_MEASURED", "NOT_REPORTED", "build_table", "load_json", "load_reported",
           "make_table", "reported", "table_names", "table_params", "write_table"]


def make_table(name: str, inputs: Mapping[str, str], params: Mapping, csv_path: str | Path, md_path: str | Path) -> None:
    """Build table ``name`` and write its CSV and Markdown."""
    spec = TABLES[name]
    write_table(build_table(name, inputs, params), csv_path, md_path, spec.title, list(spec.notes))
