"""Tasks of rules/generator.smk: base, stage1, stage2, architecture (each may run in accelerate workers)."""

from __future__ import annotations

from pathlib import Path

from medsynth.tasks import Job, launch_or_run, task


def _train(job: Job, work) -> None:
    stage = job.params.stage
    launch_or_run(job, stage, work, mixed_precision=stage.get("mixed_precision", "no"))


@task(seed=lambda job: job.params.stage.get("seed"))
def base(job: Job) -> None:
    """The base generator, rectified flow on every training slice (also the 3D generator and the architectures)."""
    from medsynth.generator.stages import run_base

    _train(job, lambda: run_base(job.input.shards, job.input.vae, job.input.stats, Path(job.output.final).parent,
                                 job.params.generator, job.params.stage))


#: the MedSyn2 architecture ablations train like the base model, with their own backbone (params.generator)
architecture = base


@task(seed=lambda job: job.params.stage.get("seed"))
def stage1(job: Job) -> None:
    """ViCTr stage 1: EWC fine-tuning of the base model on the atlas slices."""
    from medsynth.generator.stages import run_stage1

    _train(job, lambda: run_stage1(job.input.shards, job.input.vae, job.input.stats, job.input.base,
                                   Path(job.output.final).parent, job.params.generator, job.params.stage,
                                   job.params.base_stage))


@task(seed=lambda job: job.params.stage.get("seed"))
def stage2(job: Job) -> None:
    """ViCTr stage 2 for one variant."""
    from medsynth.generator.stages import run_stage2

    _train(job, lambda: run_stage2(job.input.shards, job.input.vae, job.input.stats, job.input.init, job.input.ewc,
                                   Path(job.output.final).parent, job.params.generator, job.params.stage,
                                   ddpm_cfg=job.params.ddpm))
