"""Running a training task in one process or in accelerate workers (the train family's tasks only: it
imports torch, which the data, preprocess and masks rules' envs need not hold)."""

from __future__ import annotations

from collections.abc import Callable

from medsynth.tasks import Job

__all__ = ["launch_or_run"]


def launch_or_run(job: Job, cfg, work: Callable[[], None], *, processes: int | None = None,
                  mixed_precision: str = "no") -> None:
    """Run ``work`` here, or in accelerate workers when the job has more than one process (``processes``,
    else config ``cfg.processes`` or the job's GPUs)."""
    from medsynth.launch import launch_processes, relaunch

    n = launch_processes(cfg, job.resources) if processes is None else processes
    if not relaunch(n, mixed_precision=mixed_precision):
        work()
