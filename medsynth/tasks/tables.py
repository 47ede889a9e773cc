"""Tasks of rules/tables.smk: one paper table; the headline tables (claims, calibration)."""

from __future__ import annotations

from medsynth.tasks import Job, task


def _make(job: Job) -> None:
    from medsynth.tables import make_table

    make_table(job.params.table, dict(job.input.items()), job.params.settings, job.output.csv, job.output.md)


@task()
def table(job: Job) -> None:
    """The table ``params.table`` (its registry entry) from the rule's named inputs, as CSV and Markdown."""
    _make(job)


@task()
def headline_table(job: Job) -> None:
    """The claims or calibration table: built like every table (:func:`table`), shown first in the report."""
    _make(job)
