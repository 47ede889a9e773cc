"""Task of rules/metrics.smk: the metrics of one sampling run."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task()
def metrics(job: Job) -> None:
    """Generated `eval` slices against the real slices they were conditioned on (FD, FID, SSIM, mask fidelity)."""
    from medsynth.evaluation import evaluate_run

    p = job.params
    evaluate_run(job.input.generated, job.input.index, job.input.summary, job.input.shards, job.input.extractor,
                 job.output[0], p.metrics, p.intensity, p.select, p.severity, p.severity_prompt, p.grid,
                 p.slice_size, job.wildcards.model, job.wildcards.run)
