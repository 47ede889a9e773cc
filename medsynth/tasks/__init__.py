"""What each rule runs: one task module per rule file (``tasks/<stage>.py`` for ``rules/<stage>.smk``).

A task is a function of the rule's job (``job.input``, ``job.output``, ``job.params``,
``job.wildcards``, ``job.resources``: the ``snakemake`` object of a rule script, or any object with
those attributes in a test). It reads the declared inputs and writes the declared outputs through
the stage packages. A rule script is three lines of glue: :func:`run_rule` sends the log to the
rule's log file, imports the task, runs it under provenance tracking and records the raw files a
task returns (path -> sha256).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Job", "task", "run_rule"]


class Job(Protocol):
    """What a task reads of its rule's job."""

    input: Any
    output: Any
    params: Any
    wildcards: Any
    resources: Any


def task(seed: Callable[[Job], int | None] | None = None):
    """Mark a task; ``seed(job)`` is the seed its provenance record names (the job's own config seed)."""
    def mark(fn):
        fn.seed_of = seed or (lambda job: None)
        return fn
    return mark


def run_rule(smk, name: str) -> None:
    """Run task ``name`` (``"<module>:<function>"`` under ``medsynth.tasks``) for the rule job ``smk``."""
    from medsynth.logutil import log_to_file

    log_to_file(smk.log[0])  # before the task's imports, so that their warnings reach the log too
    from medsynth.provenance import tracked

    module, _, function = name.partition(":")
    fn = getattr(importlib.import_module(f"medsynth.tasks.{module}"), function)
    with tracked(smk, seed=fn.seed_of(smk)) as provenance:
        raw = fn(smk)
        if raw:
            provenance.raw = raw
