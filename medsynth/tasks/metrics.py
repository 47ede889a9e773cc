"""Tasks of rules/metrics.smk: the metrics of one sampling run; the calibration rows."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task()
def metrics(job: Job) -> None:
    """Generated `eval` slices against the real slices they were conditioned on (FD, FID, SSIM, mask fidelity)."""
    from medsynth.evaluation import RunFiles, RunSettings, evaluate_run

    i, p = job.input, job.params
    files = RunFiles(i.generated, i.index, i.summary, i.shards, i.extractor)
    settings = RunSettings(p.metrics, p.intensity, p.select, grid=p.grid, statistics=p.statistics, severity=p.severity,
                           severity_prompt=p.severity_prompt, slice_size=p.slice_size)
    evaluate_run(files, job.output[0], settings, job.wildcards.model, job.wildcards.run)


@task()
def calibration(job: Job) -> None:
    """FD / Dice / SSIM of reference sets on the held-out slices (real training slices, VAE, degradations)."""
    from medsynth.evaluation.calibration import run_calibration

    i, p = job.input, job.params
    run_calibration(i.shards, i.extractor, i.vae, job.output[0], p.metrics, p.select, p.statistics, p.grid,
                    p.slice_size)
