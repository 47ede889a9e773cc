"""Tasks of rules/generator.smk: base, stage1, stage2, architecture (each may run in accelerate workers)."""

from __future__ import annotations

from pathlib import Path

from medsynth.tasks import Job, task
from medsynth.tasks.launching import launch_or_run


def stage_outputs(job: Job):
    """The stage's declared outputs as :class:`~medsynth.generator.stages.StageOutputs`
    (:meth:`~medsynth.train.TrainOutputs.declared`: the work folders sit beside ``final/``)."""
    from medsynth.generator.stages import StageOutputs
    from medsynth.train import TrainOutputs

    out = job.output
    train = TrainOutputs.declared(out.final, out.curve, out.train_config)
    optional = {name: Path(getattr(out, name)) for name in ("ewc", "selected_layers") if hasattr(out, name)}
    return StageOutputs(train, Path(out.prompts), Path(out.slices), **optional)


def _train(job: Job, work) -> None:
    stage = job.params.stage  # a complete (validated) training section: base, stage1, a variant's stage2, ...
    launch_or_run(job, stage, work, mixed_precision=stage["mixed_precision"])


@task(seed=lambda job: job.params.stage.get("seed"))
def base(job: Job) -> None:
    """The base generator, rectified flow on every training slice (also the 3D generator and the architectures)."""
    from medsynth.generator.stages import run_base

    _train(job, lambda: run_base(job.input.shards, job.input.vae, job.input.stats, stage_outputs(job),
                                 job.params.generator, job.params.stage,
                                 contrastive=getattr(job.params, "contrastive", None)))


#: the MedSyn2 architecture ablations train like the base model, with their own backbone (params.generator)
architecture = base


@task(seed=lambda job: job.params.stage.get("seed"))
def stage1(job: Job) -> None:
    """ViCTr stage 1: EWC fine-tuning of the base model on the atlas slices."""
    from medsynth.generator.stages import run_stage1

    _train(job, lambda: run_stage1(job.input.shards, job.input.vae, job.input.stats, job.input.base,
                                   stage_outputs(job), job.params.generator, job.params.stage,
                                   job.params.base_stage))


@task(seed=lambda job: job.params.stage.get("seed"))
def stage2(job: Job) -> None:
    """ViCTr stage 2 for one variant."""
    from medsynth.generator.stages import run_stage2

    _train(job, lambda: run_stage2(job.input.shards, job.input.vae, job.input.stats, job.input.init, job.input.ewc,
                                   stage_outputs(job), job.params.generator, job.params.stage,
                                   ddpm_cfg=job.params.ddpm))
