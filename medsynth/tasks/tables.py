"""Task of rules/tables.smk: one paper table."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task()
def table(job: Job) -> None:
    """The table ``params.table`` (its registry entry) from the rule's named inputs, as CSV and Markdown."""
    from medsynth.tables import make_table

    make_table(job.params.table, dict(job.input.items()), job.params.settings, job.output.csv, job.output.md)
