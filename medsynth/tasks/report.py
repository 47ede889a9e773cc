"""Tasks of rules/report.smk: the figures of the report (sample grid, FD vs NFE, loss curves)."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task()
def sample_grid(job: Job) -> None:
    """Real slices beside the samples of each (model, run) of the grid, for the same conditions."""
    from medsynth.evaluation_figures import sample_grid_from_files

    p = job.params
    sample_grid_from_files(job.input.shards, p.select, {label: job.input[label] for label in p.labels},
                           p.intensity, p.window, p.n_conditions, job.output[0])


@task()
def fd_vs_nfe(job: Job) -> None:
    """Frechet distance against NFE for the runs of the steps sweep."""
    from medsynth.evaluation_figures import fd_vs_nfe as plot
    from medsynth.tables import load_json

    plot([load_json(p) for p in job.input], job.output[0])


@task()
def loss_curves(job: Job) -> None:
    """Training loss of every stage."""
    from medsynth.evaluation_figures import loss_curves as plot

    plot(dict(job.input.items()), job.output[0])
