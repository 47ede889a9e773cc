"""Tasks of rules/report.smk: the figures of the report (sample grid, FD vs NFE, loss curves, downstream
violins, edit figures)."""

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


@task()
def downstream_violins(job: Job) -> None:
    """Per-slice Dice of each downstream setting per structure (ViCTr Fig. 7)."""
    from medsynth.evaluation_figures import downstream_violins as plot
    from medsynth.tables import load_json

    plot({setting: load_json(path) for setting, path in job.input.items()}, job.output[0])


def _edit_figure(job: Job, plot) -> None:
    p = job.params
    plot(job.input.shards, job.input.vae, job.input.stats, job.input.model, job.input.get("init"), p.generator,
         p.model_cfg, p.sampling, p.select, p.figure, p.intensity, p.window, p.n_conditions, job.output[0])


@task()
def counterfactual_grid(job: Job) -> None:
    """Real slices beside their SDEdit counterfactuals at each severity (ViCTr Fig. 3 / 8)."""
    from medsynth.generator.edit_figures import counterfactual_figure

    _edit_figure(job, counterfactual_figure)


@task()
def progressive_grid(job: Job) -> None:
    """Conditions added stage by stage (MedSyn2 Fig. 5)."""
    from medsynth.generator.edit_figures import progressive_figure

    _edit_figure(job, progressive_figure)
