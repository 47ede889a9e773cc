"""Tasks of rules/downstream.smk: train the segmenter of one setting and score it on the real test slices; score
a pretrained reference segmenter on a task's test slices."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task(seed=lambda job: job.params.downstream.get("seed"))
def downstream(job: Job) -> None:
    """One downstream setting: its training set, the segmenter, its evaluation on the real test slices."""
    from medsynth.evaluation import run_downstream
    from medsynth.launch import launch_processes
    from medsynth.tasks.launching import launch_or_run
    from medsynth.train.config import TrainOutputs

    cfg = job.params.downstream
    # nnU-Net runs its own trainer (one process); the MONAI segmenters train under accelerate like the generators
    nnunet = str(cfg["model"]["type"]).lower() == "nnunetv2"  # cfg: the validated downstream section
    launch_or_run(job, cfg, lambda: run_downstream(
        job.input.shards, job.input.get("synthetic"), job.wildcards.setting, cfg,
        TrainOutputs.declared(job.output.final, job.output.curve, job.output.train_config),
        job.output.evaluation, job.params.grid, job.params.slice_size, extractor=job.input.get("extractor"),
        statistics=job.params.statistics, intensity=job.params.intensity),
        processes=1 if nnunet else launch_processes(cfg, job.resources))


@task()
def downstream_reference(job: Job) -> None:
    """One reference of a downstream task: a pretrained segmenter scored on the task's real test slices."""
    from medsynth.evaluation.downstream_reference import run_reference

    run_reference(job.input.shards, job.wildcards.downstream_task, job.wildcards.reference, job.params.downstream,
                  job.params.masks, job.output.evaluation, job.params.grid, job.params.slice_size,
                  job.params.intensity, statistics=job.params.statistics)
